"""Generate a synthetic sequence in the KITTI odometry layout (what ``KittiOdometrySequence`` reads).

```
OUT/
  image_2/000000.png ...  rectified colour camera cam2, 1241 x 376
  velodyne/000000.bin ... float32 (N, 4): x, y, z in the LiDAR frame, reflectance
  calib.txt               P0..P3, Tr (LiDAR -> rectified cam0)
  poses.txt               T_world_cam0 per frame (world: z up, ground at z = 0)
  times.txt               seconds
  world_mesh.npz          the scene (exact visibility, re-rendering)
  sim.json                format version, seed, kind, parameters
```

Output is a pure function of the configuration: same config -> byte-identical files (no timestamps or timing
in any file). It is written into a temporary directory next to ``OUT`` and swapped in at the end, so an
interrupted run leaves the previous output as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import replace_dir
from ..datasets.kitti_odometry import write_calib, write_poses
from ..errors import DataError
from .sensors import CameraModel, LidarModel, Rig, Tracer, kitti_rig
from .trajectory import MotionProfile, sample_trajectory
from .world import KINDS, STREAM_JITTER, World, build_world, plan_route

__all__ = ["SIM_FORMAT", "SIM_FORMAT_VERSION", "SimConfig", "SimResult", "generate_sequence", "setup_sequence"]

SIM_FORMAT = "ep2p-loc-sim"
SIM_FORMAT_VERSION = 1
STREAM_FRAME = 3  # rng stream of per-frame sensor noise: default_rng([seed, STREAM_FRAME, frame, sensor])

# per kind: speed (m/s), frame rate (Hz), lateral acceleration (m/s^2), body motion (deg)
KIND_MOTION = {
    "outdoor": {"v_max": 10.0, "rate_hz": 10.0, "a_lat": 3.0, "body_motion_deg": 0.3},
    "indoor": {"v_max": 1.2, "rate_hz": 5.0, "a_lat": 0.6, "body_motion_deg": 0.15},
}


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines a sequence (recorded in sim.json)."""

    kind: str = "outdoor"
    frames: int = 100
    seed: int = 0
    blocks: int = 4  # outdoor: junctions per side of the street grid the route uses
    speed: float | None = None  # m/s; None: the kind's default
    rate_hz: float | None = None  # frames per second; None: the kind's default
    azimuth_step_deg: float = 0.2
    range_noise: float = 0.02
    image_noise: float = 2.0  # 8-bit digital numbers
    shadows: bool = True  # outdoor only (indoor light has no single source)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if int(self.frames) < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise ValueError(f"rate must be > 0, got {self.rate_hz}")
        if self.range_noise < 0 or self.image_noise < 0:
            raise ValueError("noise levels must be >= 0")
        if self.kind == "outdoor" and int(self.blocks) < 2:
            raise ValueError(f"outdoor worlds need blocks >= 2, got {self.blocks}")
        if not 0.01 <= self.azimuth_step_deg <= 5.0:
            raise ValueError(f"LiDAR azimuth step must be in [0.01, 5] degrees, got {self.azimuth_step_deg}")

    def motion(self) -> MotionProfile:
        m = dict(KIND_MOTION[self.kind])
        if self.speed is not None:
            m["v_max"] = float(self.speed)
        if self.rate_hz is not None:
            m["rate_hz"] = float(self.rate_hz)
        return MotionProfile(**m)


@dataclass(frozen=True)
class SimResult:
    path: Path
    frames: int
    triangles: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class SequenceSetup:
    """A configured world, rig, sensors and trajectory: everything needed to render frame ``i``."""

    config: SimConfig
    world: World
    tracer: Tracer
    rig: Rig
    camera: CameraModel
    lidar: LidarModel
    T_world_base: np.ndarray  # (N, 4, 4)
    times: np.ndarray

    def T_world_cam0(self, i: int) -> np.ndarray:
        return self.T_world_base[i] @ self.rig.T_base_cam0

    def T_world_cam2(self, i: int) -> np.ndarray:
        return self.T_world_base[i] @ self.rig.T_base_cam(2)

    def T_world_velo(self, i: int) -> np.ndarray:
        return self.T_world_base[i] @ self.rig.T_base_velo

    def render(self, i: int, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 of cam2 and LiDAR scan (N, 4) float32 of frame ``i``."""
        seed = self.config.seed
        cam_rng = np.random.default_rng([seed, STREAM_FRAME, i, 0]) if noise else None
        lidar_rng = np.random.default_rng([seed, STREAM_FRAME, i, 1]) if noise else None
        frame = self.camera.render(self.tracer, self.T_world_cam2(i), self.world.lighting, cam_rng)
        scan = self.lidar.scan(self.tracer, self.T_world_velo(i), lidar_rng)
        return frame.rgb, scan


def setup_sequence(config: SimConfig, nthreads: int = 0) -> SequenceSetup:
    """Build the world, the trajectory and the sensors of ``config`` (no rendering, nothing written)."""
    world = build_world(config.kind, config.seed, blocks=config.blocks)
    if not config.shadows and world.lighting.shadows:
        from dataclasses import replace

        world.lighting = replace(world.lighting, shadows=False)
    motion = config.motion()
    need = config.frames / motion.rate_hz * motion.v_max + 10.0
    corners, radii = plan_route(world, need)
    T, times = sample_trajectory(
        corners, radii, int(config.frames), motion, np.random.default_rng([config.seed, STREAM_JITTER])
    )
    rig = kitti_rig()
    return SequenceSetup(
        config,
        world,
        Tracer(world.mesh, nthreads=nthreads),
        rig,
        CameraModel(rig.camera, noise_dn=config.image_noise),
        LidarModel(azimuth_step_deg=config.azimuth_step_deg, range_noise=config.range_noise),
        T,
        times,
    )


def _sim_json(setup: SequenceSetup) -> str:
    c = setup.config
    lidar = setup.lidar
    doc = {
        "format": SIM_FORMAT,
        "format_version": SIM_FORMAT_VERSION,
        "seed": c.seed,
        "kind": c.kind,
        "frames": c.frames,
        "parameters": asdict(c),
        "motion": asdict(c.motion()),
        "world": {
            "frame": "world: x east, y north, z up (REP-103), ground at z = 0",
            "triangles": setup.world.mesh.n_triangles,
            "lighting": asdict(setup.world.lighting),
        },
        "poses": "poses.txt = T_world_cam0 (3x4 row-major); images are cam2; scans in the LiDAR frame",
        "camera": {
            "width": setup.rig.camera.width,
            "height": setup.rig.camera.height,
            "K": setup.rig.camera.K.tolist(),
            "noise_dn": setup.camera.noise_dn,
        },
        "lidar": {
            "beams": lidar.n_beams,
            "fov_deg": [lidar.fov_down_deg, lidar.fov_up_deg],
            "azimuth_step_deg": lidar.azimuth_step_deg,
            "range_m": [lidar.min_range, lidar.max_range],
            "range_noise_m": lidar.range_noise,
            "dropout": lidar.dropout,
        },
        "T_base_velo": setup.rig.T_base_velo.tolist(),
        "T_base_cam0": setup.rig.T_base_cam0.tolist(),
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "sim.json").is_file():
        raise DataError(f"{out}: not empty and not a synthetic sequence (no sim.json); refusing to replace it")


def generate_sequence(out: str | Path, config: SimConfig, progress: bool = True, nthreads: int = 0) -> SimResult:
    """Render ``config`` into ``out`` (replacing a previous synthetic sequence there atomically)."""
    import tqdm
    from PIL import Image

    out = Path(out).absolute()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    setup = setup_sequence(config, nthreads=nthreads)
    tmp = out.parent / f".{out.name}.sim-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "image_2").mkdir(parents=True)
        (tmp / "velodyne").mkdir()
        rig = setup.rig
        write_calib(tmp / "calib.txt", [rig.projection(i) for i in range(4)], rig.T_cam0_velo)
        write_poses(tmp / "poses.txt", np.stack([setup.T_world_cam0(i) for i in range(config.frames)]))
        (tmp / "times.txt").write_text("".join(f"{t:.6e}\n" for t in setup.times))
        setup.world.mesh.save(tmp / "world_mesh.npz")
        bar = tqdm.tqdm(range(config.frames), desc=f"sim {config.kind}", unit="frame", disable=not progress)
        for i in bar:
            rgb, scan = setup.render(i)
            Image.fromarray(rgb).save(tmp / "image_2" / f"{i:06d}.png", format="PNG", compress_level=1)
            scan.astype("<f4").tofile(tmp / "velodyne" / f"{i:06d}.bin")
        (tmp / "sim.json").write_text(_sim_json(setup))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SimResult(out, config.frames, setup.world.mesh.n_triangles, time.perf_counter() - t0)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` (only if it is a previous sequence) by ``tmp``, atomically."""
    if out.exists():
        _check_out(out)
    replace_dir(tmp, out)
