"""Headings from a Manhattan world: the image's horizontal lines and the map's walls each give the camera's turn
modulo 90 deg, and together the turns from a viewpoint that face the camera the way it looks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ep2p_loc_ros.geometry import PinholeCamera, invert, make_T, rotvec_to_matrix, transform_points
from ep2p_loc_ros.manhattan_headings import image_line_yaw, manhattan_turns, mod90_gap, wall_yaw
from ep2p_loc_ros.pose_hypotheses import turned_by

CAMERA = PinholeCamera.from_params(1241, 376, 718.856, 718.856, 607.19, 185.22)


def _room(yaw_deg: float) -> np.ndarray:
    """Segments (N, 2, 3) of a box room 8 m x 6 m x 3 m about a camera at its middle (1.5 m up, y down), its walls
    turned by ``yaw_deg`` about the vertical: the floor's and ceiling's edges, a grid of tiles on the floor, four
    shelves along every wall (a KITTI camera sees +-14.5 deg up and down: walls 3-4 m away from 0.8 m below to 0.8 m
    above its height), and vertical door frames."""
    R = rotvec_to_matrix([0.0, math.radians(yaw_deg), 0.0])
    segs = []
    floor, ceiling = 1.5, -1.5
    xs, zs = (-4.0, 4.0), (-3.0, 3.0)
    for y in (floor, ceiling, -0.7, -0.35, 0.35, 0.7):  # edges and shelves along every wall
        segs += [((x, y, zs[0]), (x, y, zs[1])) for x in xs] + [((xs[0], y, z), (xs[1], y, z)) for z in zs]
    for t in np.arange(-3.0, 3.01, 0.75):  # floor tiles
        segs += [((xs[0], floor, t), (xs[1], floor, t))]
    for t in np.arange(-4.0, 4.01, 1.0):
        segs += [((t, floor, zs[0]), (t, floor, zs[1]))]
    for z in (-1.0, 1.0):  # door frames: vertical edges
        segs += [((xs[1], floor, z), (xs[1], -0.6, z))]
    return np.array(segs) @ R.T


def _draw(segments: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """A grey image of the segments seen by ``CAMERA`` at ``T_world_cam`` (each clipped in front of it)."""
    import cv2

    img = np.full((CAMERA.height, CAMERA.width), 90, np.uint8)
    T_cam_world = invert(T_world_cam)
    for a, b in segments:
        pa, pb = transform_points(T_cam_world, np.array([a, b]))
        if pa[2] < 0.2 and pb[2] < 0.2:
            continue
        if pa[2] < 0.2 or pb[2] < 0.2:  # clip to z = 0.2 m
            s = (0.2 - pa[2]) / (pb[2] - pa[2])
            cut = pa + s * (pb - pa)
            pa, pb = (cut, pb) if pa[2] < 0.2 else (pa, cut)
        uv = CAMERA.project(np.array([pa, pb])).uv
        if np.isfinite(uv).all() and np.abs(uv).max() < 1e5:
            cv2.line(img, tuple(np.round(uv[0]).astype(int)), tuple(np.round(uv[1]).astype(int)), 230, 2, cv2.LINE_AA)
    return img


@pytest.mark.parametrize("room_yaw, camera_yaw", [(0.0, 0.0), (0.0, 37.0), (12.0, -61.0), (30.0, 85.0)])
def test_image_lines_give_the_rooms_direction_from_the_optical_axis_modulo_90(room_yaw, camera_yaw):
    T = make_T(rotvec_to_matrix([0.0, math.radians(camera_yaw), 0.0]), [0.3, 0.0, -0.5])
    found = image_line_yaw(_draw(_room(room_yaw), T), CAMERA)
    assert found is not None and 0.0 <= found < 90.0
    # the room's lines run along room_yaw and room_yaw + 90; the camera is turned by camera_yaw
    assert mod90_gap(found, room_yaw - camera_yaw) < 0.75, (found, room_yaw - camera_yaw)


def test_image_lines_that_agree_on_nothing_give_no_direction():
    import cv2

    assert image_line_yaw(np.full((376, 1241), 128, np.uint8), CAMERA) is None  # no lines at all
    rng = np.random.default_rng(3)
    img = np.zeros((376, 1241), np.uint8)
    for _ in range(60):  # segments in every direction, as a non-Manhattan clutter would give
        a, b = rng.uniform((0, 0), (1241, 376), (2, 2)).astype(int)
        cv2.line(img, tuple(a), tuple(b), 255, 2)
    assert image_line_yaw(img, CAMERA) is None
    with pytest.raises(ValueError, match="grey image"):
        image_line_yaw(np.zeros((376, 1241, 3), np.uint8), CAMERA)


def _walls(yaw_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Points (map frame = a level camera's: y down) on two walls at right angles, turned by ``yaw_deg`` about the
    vertical, on the floor and on a round pillar (no direction of its own)."""
    n = 3000
    u, h = rng.uniform(-5, 5, n), rng.uniform(-1.5, 1.5, n)
    wall_a = np.stack([u, h, np.full(n, 4.0)], 1)  # a wall across the axis, 4 m ahead
    wall_b = np.stack([np.full(n, -3.0), h, u], 1)  # a wall along it, 3 m to the left
    floor = np.stack([rng.uniform(-3, 5, n), np.full(n, 1.5), rng.uniform(-5, 4, n)], 1)
    t = rng.uniform(0, 2 * np.pi, n)
    pillar = np.stack([1.0 + 0.3 * np.cos(t), h, 1.0 + 0.3 * np.sin(t)], 1)
    pts = np.concatenate([wall_a, wall_b, floor, pillar]) + rng.normal(0, 0.005, (4 * n, 3))
    return pts @ rotvec_to_matrix([0.0, math.radians(yaw_deg), 0.0]).T


@pytest.mark.parametrize("walls_yaw, viewpoint_yaw", [(0.0, 0.0), (20.0, -5.0), (-33.0, 41.0)])
def test_the_walls_give_their_direction_from_a_viewpoints_axis_modulo_90(walls_yaw, viewpoint_yaw):
    pts = _walls(walls_yaw, np.random.default_rng(0))
    T_viewpoint = make_T(rotvec_to_matrix([0.0, math.radians(viewpoint_yaw), 0.0]), [0.5, 0.0, 0.2])
    found = wall_yaw(pts, T_viewpoint)
    assert found is not None and mod90_gap(found, walls_yaw - viewpoint_yaw) < 0.75, found
    # only the floor and the pillar: no wall to tell a direction
    assert wall_yaw(pts[6000:], T_viewpoint) is None
    assert wall_yaw(pts[:5], T_viewpoint) is None


def test_manhattan_turns_put_the_walls_along_the_lines_within_the_bound():
    turns = manhattan_turns(10.0, 10.0, 95.0)
    assert turns[0] == 0.0 and sorted(turns) == [-90.0, 0.0, 90.0]
    turns = manhattan_turns(line_yaw_deg=84.0, wall_yaw_deg=0.0, max_turn_deg=95.0)
    assert turns == pytest.approx([6.0, -84.0])  # nearest first; 96 is past the bound
    assert manhattan_turns(84.0, 0.0, 5.0) == []


def test_a_camera_turned_from_a_viewpoint_is_found_among_the_turns_from_its_lines_and_the_walls():
    """End to end on the two estimates: a camera in the room turned 57 deg from a viewpoint; the image's lines and
    the walls seen from the viewpoint give a turn of that viewpoint within a degree of the camera's heading."""
    rng = np.random.default_rng(1)
    room_yaw = 14.0
    T_viewpoint = make_T(np.eye(3), [0.0, 0.0, 0.0])
    T_camera = make_T(rotvec_to_matrix([0.0, math.radians(57.0), 0.0]), [-0.8, 0.0, 0.6])
    line = image_line_yaw(_draw(_room(room_yaw), T_camera), CAMERA)
    wall = wall_yaw(_walls(room_yaw, rng), T_viewpoint)
    assert line is not None and wall is not None
    candidates = turned_by(T_viewpoint, manhattan_turns(line, wall, 95.0))
    heading = [math.degrees(math.acos(np.clip(c[:3, 2] @ T_camera[:3, 2], -1, 1))) for c in candidates]
    assert min(heading) < 1.0, heading
