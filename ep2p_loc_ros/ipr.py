"""Invisible point removal (IPR, as in EP2P-Loc, ICCV 2023): which map points can a camera at a pose see?

The map is a point cloud, not a mesh, so visibility is decided in image space: points are projected, the
nearest depth per pixel is scattered into a sparse depth image, and a point is hidden when the nearest surface
around its pixel lies clearly in front of it. Everything runs as a handful of torch tensor ops (no loop over
points or poses), so one call handles many candidate poses, on CPU or CUDA. numpy points on the CPU (the
localizer's and the reflectance alignment's case) go through a compiled kernel of the same float operations
instead (numba, :func:`_visible_compiled`): the same mask bit for bit, 2-3x faster on 2 cores.

How the "nearest surface around the pixel" is estimated (why min-pool *then* max-pool):

- ``near = minpool_k(D)`` (``D`` = sparse depth image, empty pixels = +inf) spreads every point over a k x k
  neighbourhood. Used alone it also spreads foreground objects past their silhouette by k//2 pixels (hiding
  background points next to every edge) and makes a slanted surface (the road) hide its own farther part.
- ``surface = maxpool_k(near)`` (a morphological closing of the foreground) undoes that spreading. The result
  has a simple meaning: a point at depth ``z`` is hidden iff *every* k x k window containing its pixel also
  contains a point nearer than ``z / (1 + rel_threshold)``. Hence gaps between sparse occluder samples that are
  smaller than the window are filled (background seen "through" a scanned wall is removed), silhouettes stay
  where they are, a monotone slanted surface is never self-occluded, and a pixel with an empty window next to
  it (sparse region, or a gap as large as the window) keeps its point.

Distortion: pixels are computed exactly like :meth:`PinholeCamera.project` (plumb_bob / rational distortion
and skew included), so ``in_image`` agrees with the camera model used everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .geometry import PinholeCamera

__all__ = ["IPRConfig", "compile_kernel", "visible_mask", "visible_mask_t"]

ArrayLike = np.ndarray | torch.Tensor

_MIN_DEPTH = 1e-9  # same "in front of the camera" test as PinholeCamera.project


@dataclass(frozen=True)
class IPRConfig:
    """IPR parameters (frozen so a loaded config cannot drift).

    kernel_size: side of the square window, in (downsampled) pixels; gaps between occluder samples narrower
        than this are treated as closed surface. Odd.
    rel_threshold: a point is hidden when its depth exceeds the local surface depth by more than this fraction
        (relative, so the tolerance grows with depth like LiDAR noise and map-registration error do).
    downsample: the depth image has one cell per ``downsample x downsample`` pixels (speed, and denser cells
        for sparse maps); the window then spans ``kernel_size * downsample`` image pixels. A point more than
        ``rel_threshold`` behind the nearest point of its own cell is always hidden, so where one cell spans
        a wide depth range (road far ahead at a grazing angle) the far part thins out.

    Defaults (5, 0.1, 2): a 10 px window closes the gaps between the scan lines of a KITTI HDL-64 scan seen
    from the camera (about 4-6 px apart) and keeps 99 % of the in-image points closer than 10 m; 10 % is well
    above LiDAR noise at 5-80 m and below the depth step between an object and what is behind it.
    """

    kernel_size: int = 5
    rel_threshold: float = 0.1
    downsample: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.kernel_size, int | np.integer) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"IPRConfig.kernel_size must be an odd integer >= 1, got {self.kernel_size!r}")
        if not isinstance(self.downsample, int | np.integer) or self.downsample < 1:
            raise ValueError(f"IPRConfig.downsample must be an integer >= 1, got {self.downsample!r}")
        if not (math.isfinite(float(self.rel_threshold)) and float(self.rel_threshold) >= 0.0):
            raise ValueError(f"IPRConfig.rel_threshold must be finite and >= 0, got {self.rel_threshold!r}")
        object.__setattr__(self, "kernel_size", int(self.kernel_size))
        object.__setattr__(self, "downsample", int(self.downsample))
        object.__setattr__(self, "rel_threshold", float(self.rel_threshold))


def _as_tensor(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        arr = np.ascontiguousarray(x)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # read-only arrays: torch warns
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        if t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
        t = t.to(torch.float32)
    return t.to(device)


def _distort(x: torch.Tensor, y: torch.Tensor, dist: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Plumb_bob / rational distortion of normalised coordinates, same formula as PinholeCamera."""
    d = np.zeros(8)
    d[: dist.size] = dist
    k1, k2, p1, p2, k3, k4, k5, k6 = (float(v) for v in d)
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def visible_mask(
    points: ArrayLike,
    T_cam_map: ArrayLike,
    camera: PinholeCamera,
    config: IPRConfig | None = None,
    *,
    device: str | torch.device | None = None,
) -> ArrayLike:
    """Boolean mask of the map points a camera sees: in front, inside the image, and not occluded.

    Args:
        points: (N, 3) points in the map frame (numpy or torch). Rows with NaN/Inf are simply not visible.
        T_cam_map: (4, 4) camera pose (map -> optical frame), or (B, 4, 4) for B candidate poses at once.
        camera: image size, K and distortion of the (possibly undistorted) image the points are matched to.
        config: kernel / threshold / downsample; ``IPRConfig()`` if None.
        device: where to compute; default the device of a torch ``points`` (else of a torch pose), else CPU.

    Returns:
        (N,) mask for a single pose, (B, N) for a batch; numpy for numpy ``points``, else a torch tensor on
        the device ``points`` came on. Work is done in float64 for float64 points, else in float32.
    """
    cfg = IPRConfig() if config is None else config
    if device is None:
        device = next((x.device for x in (points, T_cam_map) if isinstance(x, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)

    P = _as_tensor(points, "points", device)
    T = _as_tensor(T_cam_map, "T_cam_map", device)
    if P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(P.shape)} (pass scan[:, :3] for x, y, z, r)")
    single = T.ndim == 2
    if T.shape[-2:] != (4, 4) or T.ndim not in (2, 3):
        raise ValueError(f"T_cam_map must have shape (4, 4) or (B, 4, 4), got {tuple(T.shape)}")
    if not bool(torch.isfinite(T).all()):
        raise ValueError("T_cam_map contains NaN/Inf")
    T = T.reshape(-1, 4, 4).to(P.dtype)
    B, N = T.shape[0], P.shape[0]

    if not (N and B):
        vis = torch.zeros((B, N), dtype=torch.bool, device=device)
    elif isinstance(points, np.ndarray) and device.type == "cpu" and not camera.has_distortion:
        vis = torch.from_numpy(_visible_compiled(np.ascontiguousarray(P.numpy().T), T.numpy(), camera, cfg))
    else:
        vis = _visible(P, T, camera, cfg)
    if single:
        vis = vis[0]
    if isinstance(points, np.ndarray):
        return vis.cpu().numpy()
    return vis.to(points.device)


def visible_mask_t(
    points_t: np.ndarray, T_cam_map: np.ndarray, camera: PinholeCamera, config: IPRConfig | None = None
) -> np.ndarray:
    """:func:`visible_mask` of numpy points laid out (3, N), float32 or float64, for (B, 4, 4) poses: (B, N).

    Why: the reflectance alignment keeps its points so (each coordinate contiguous, as its scoring kernel takes
    them) and asks for a mask ~30 times a frame; :func:`visible_mask` would take them back to (N, 3), through
    torch, and copy them to (3, N) again for the compiled kernel. The same mask, bit for bit."""
    cfg = IPRConfig() if config is None else config
    if not isinstance(points_t, np.ndarray) or points_t.ndim != 2 or points_t.shape[0] != 3:
        raise ValueError(f"points_t must be a (3, N) numpy array, got {getattr(points_t, 'shape', type(points_t))}")
    if points_t.dtype not in (np.float32, np.float64):
        raise ValueError(f"points_t must be float32 or float64, got {points_t.dtype}")
    T = np.asarray(T_cam_map, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"T_cam_map must have shape (B, 4, 4), got {T.shape}")
    if not np.isfinite(T).all():
        raise ValueError("T_cam_map contains NaN/Inf")
    if camera.has_distortion or points_t.shape[1] == 0 or len(T) == 0:
        return visible_mask(points_t.T, T, camera, cfg).reshape(len(T), points_t.shape[1])
    return _visible_compiled(np.ascontiguousarray(points_t), T.astype(points_t.dtype), camera, cfg)


def _visible(P: torch.Tensor, T: torch.Tensor, camera: PinholeCamera, cfg: IPRConfig) -> torch.Tensor:
    """(B, N) visibility; ``P`` (N, 3) and ``T`` (B, 4, 4) already on the compute device and dtype."""
    B = T.shape[0]
    W, H = camera.width, camera.height
    # Transform with explicit broadcasts, not a matmul, so every pose's result is bit-identical whatever B
    # is (batched == per-pose calls) and numpy/torch inputs give the same answer.
    R, t = T[:, :3, :3, None], T[:, :3, 3, None]  # (B, 3, 3, 1), (B, 3, 1)
    Pt = P.T.contiguous()  # rows x, y, z: contiguous operands for the elementwise ops below
    cam = R[:, :, 0] * Pt[0]
    cam += R[:, :, 1] * Pt[1]
    cam += R[:, :, 2] * Pt[2]
    cam += t  # (B, 3, N) in the optical frame
    depth = cam[:, 2]

    # Pixels like PinholeCamera.project; points behind the camera get garbage pixels, masked by the depth test.
    inv_z = depth.reciprocal()
    xn, yn = cam[:, 0] * inv_z, cam[:, 1] * inv_z
    if camera.has_distortion:
        xn, yn = _distort(xn, yn, camera.dist)
    u = xn.mul_(camera.fx).add_(camera.cx)
    if camera.K[0, 1] != 0:  # skew
        u += float(camera.K[0, 1]) * yn
    v = yn.mul_(camera.fy).add_(camera.cy)
    # Shifted by half a pixel (exact in float): in image <=> 0 <= u + 0.5 < W, pixel index = floor(u + 0.5).
    u += 0.5
    v += 0.5
    valid = (depth > _MIN_DEPTH) & (u >= 0) & (u < W) & (v >= 0) & (v < H)  # NaN compares False

    # Only the points that project into the image go on (a 360 deg scan has ~1/6 of them there). This is the
    # one host sync on a GPU; it also spares the scatter a flood of dummy writes to one cell (atomics).
    b_idx, n_idx = valid.nonzero(as_tuple=True)
    z = depth[b_idx, n_idx]
    # Pixel -> coarse cell. floor(m / ds) of an integer-valued float m is exact (m / ds is correctly rounded)
    # and much faster on CPU than integer division.
    ds = cfg.downsample
    Hc, Wc = -(-H // ds), -(-W // ds)
    col, row = u[b_idx, n_idx].floor_(), v[b_idx, n_idx].floor_()
    if ds > 1:
        col, row = col.div_(ds).floor_(), row.div_(ds).floor_()
    cell = (b_idx * Hc + row.long()) * Wc + col.long()  # pose b has its own image

    D = torch.full((B * Hc * Wc,), torch.inf, dtype=z.dtype, device=z.device)
    D.scatter_reduce_(0, cell, z, reduce="amin", include_self=True)
    D = D.view(B, Hc, Wc)

    k = cfg.kernel_size
    near = _window_filter(D, k, torch.minimum)  # nearest depth in each k x k window (all empty -> +inf)
    surface = _window_filter(near, k, torch.maximum)  # closing: the farthest of those window minima
    keep = z <= surface.reshape(-1)[cell] * (1.0 + cfg.rel_threshold)
    return torch.zeros_like(valid).index_put_((b_idx, n_idx), keep)


def compile_kernel() -> None:
    """Compile the CPU kernel now, for float32 and float64 points and the 5 x 5 and 3 x 3 windows (numba: ~2 s the
    first time on a host, well under a second from its on-disk cache), so that a node's first frame does not pay."""
    cam = PinholeCamera.from_params(8, 8, 4.0, 4.0, 4.0, 4.0)
    for dtype in (np.float32, np.float64):
        visible_mask(np.array([[0.0, 0.0, 1.0]], dtype), np.eye(4), cam)
    visible_mask(np.array([[0.0, 0.0, 1.0]], np.float32), np.eye(4), cam, IPRConfig(kernel_size=3, downsample=4))


def _visible_compiled(Pt: np.ndarray, T: np.ndarray, camera: PinholeCamera, cfg: IPRConfig) -> np.ndarray:
    """:func:`_visible` for numpy points on the CPU, laid out (3, N) C-contiguous (``Pt``), ``T`` (B, 4, 4) in
    their float type, and an undistorted camera, compiled (numba): the same steps in the same float operations, so
    the same mask bit for bit (``test_ipr_numpy_and_torch_agree``).

    Why: torch runs each step as a pass over all (B, N) point-poses with a (B, N) temporary, then a ``nonzero``,
    a scatter and a gather; the reflectance alignment asks for 25 poses of 30,000 points per frame (10-12 ms in
    torch, 4.6 ms here; session 24). The compiled loop keeps each point's projection in registers.
    """
    K = camera.K
    intr = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1], _MIN_DEPTH, 1.0 + cfg.rel_threshold], Pt.dtype)
    out = np.empty((T.shape[0], Pt.shape[1]), bool)
    R, t = np.ascontiguousarray(T[:, :3, :3]), np.ascontiguousarray(T[:, :3, 3])
    args = (camera.width, camera.height, cfg.downsample, cfg.kernel_size, bool(K[0, 1] != 0))
    _visible_kernel(Pt, R, t, intr, *args, out)
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _visible_kernel(
    P: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    intr: np.ndarray,
    W: int,
    H: int,
    ds: int,
    k: int,
    skew: bool,
    out: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """(B, N) ``out``: each pose's visibility of the (3, N) points ``P``, as :func:`_visible` computes it, with
    ``intr`` = fx, fy, cx, cy, skew, the least depth in front and 1 + rel_threshold in ``P``'s float type."""
    fx, fy, cx, cy, sk, min_depth, scale = intr[0], intr[1], intr[2], intr[3], intr[4], intr[5], intr[6]
    zero, half = intr.dtype.type(0.0), intr.dtype.type(0.5)
    wf, hf, dsf = intr.dtype.type(W), intr.dtype.type(H), intr.dtype.type(ds)
    one = intr.dtype.type(1.0)
    Hc, Wc = -(-H // ds), -(-W // ds)
    depth_img = np.empty((Hc, Wc), P.dtype)
    near = np.empty((Hc, Wc), P.dtype)
    n = P.shape[1]
    X, Y, Z = P[0], P[1], P[2]  # each coordinate contiguous: the projection loop vectorises
    cells = np.empty(n, np.int64)
    zs = np.empty(n, P.dtype)
    r = k // 2
    for b in range(R.shape[0]):
        r00, r01, r02 = R[b, 0, 0], R[b, 0, 1], R[b, 0, 2]
        r10, r11, r12 = R[b, 1, 0], R[b, 1, 1], R[b, 1, 2]
        r20, r21, r22 = R[b, 2, 0], R[b, 2, 1], R[b, 2, 2]
        t0, t1, t2 = t[b, 0], t[b, 1], t[b, 2]
        # projection, branch-free (a select, not a branch, lets the loop vectorise): each point's cell or -1
        for i in range(n):
            x, y, z = X[i], Y[i], Z[i]
            c0 = r00 * x + r01 * y + r02 * z + t0
            c1 = r10 * x + r11 * y + r12 * z + t1
            d = r20 * x + r21 * y + r22 * z + t2
            inv = one / d
            xn, yn = c0 * inv, c1 * inv
            u = xn * fx + cx
            if skew:
                u += sk * yn
            v = yn * fy + cy
            u += half
            v += half
            ok = (d > min_depth) & (u >= zero) & (u < wf) & (v >= zero) & (v < hf)
            col = np.floor(min(max(u, zero), wf - one))
            row = np.floor(min(max(v, zero), hf - one))
            if ds > 1:
                col, row = np.floor(col / dsf), np.floor(row / dsf)
            cell = np.int64(row) * Wc + np.int64(col)
            cells[i] = cell if ok else -1
            zs[i] = d
        flat = depth_img.ravel()
        flat[:] = np.inf
        for i in range(n):  # the nearest depth in each cell
            c = cells[i]
            if c >= 0 and zs[i] < flat[c]:
                flat[c] = zs[i]
        _min_max_filter(depth_img, near, r, True)
        _min_max_filter(near, depth_img, r, False)  # the surface, into depth_img
        for i in range(n):
            c = cells[i]
            out[b, i] = (c >= 0) & (zs[i] <= flat[max(c, 0)] * scale)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _min_max_filter(src: np.ndarray, dst: np.ndarray, r: int, is_min: bool) -> None:  # pragma: no cover
    """``dst`` = the (2r+1)-square min (or max) filter of ``src``, windows cut at the border, as
    :func:`_window_filter` computes it: by shifted rows and columns, so that the inner loops vectorise.
    The default window (r = 2) takes :func:`_min_max_filter_5`: the same values at ~0.4x the time; r = 1 (the
    Manhattan grid's IPR) :func:`_min_max_filter_3`."""
    h, w = src.shape
    if r == 2 and h >= 4 and w >= 4:
        _min_max_filter_5(src, dst, is_min)
        return
    if r == 1 and h >= 2 and w >= 2:
        _min_max_filter_3(src, dst, is_min)
        return
    tmp = src.copy()
    for s in range(1, min(r, w - 1) + 1):  # along each row
        for i in range(h):
            for j in range(w - s):
                a, b = tmp[i, j], src[i, j + s]
                tmp[i, j] = min(a, b) if is_min else max(a, b)
            for j in range(s, w):
                a, b = tmp[i, j], src[i, j - s]
                tmp[i, j] = min(a, b) if is_min else max(a, b)
    dst[:] = tmp
    for s in range(1, min(r, h - 1) + 1):  # then along each column
        for i in range(h - s):
            for j in range(w):
                a, b = dst[i, j], tmp[i + s, j]
                dst[i, j] = min(a, b) if is_min else max(a, b)
        for i in range(s, h):
            for j in range(w):
                a, b = dst[i, j], tmp[i - s, j]
                dst[i, j] = min(a, b) if is_min else max(a, b)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _min_max_filter_5(src: np.ndarray, dst: np.ndarray, is_min: bool) -> None:  # pragma: no cover (compiled)
    """:func:`_min_max_filter` for a 5 x 5 window (h, w >= 4): each row's five-wide window in one pass (five loads
    per pixel, no loop inside, so it vectorises; the shifted passes read and wrote the image four times), then
    the columns over up to five rows, each in one pass where the window is whole (94 x 310 cells: 21 -> 11 µs a
    filter, session 36). Why: IPR's depth images are filtered twice a pose, and the alignment asks for ~100 poses a
    frame, where the two filters were most of IPR's time (~110 us a pose of ~260)."""
    h, w = src.shape
    if h < 4 or w < 4:  # (also what lets the compiler vectorise the rows: 4x faster with it, one-off timing)
        raise ValueError("a 5 x 5 filter here needs an image of at least 4 x 4")
    tmp = np.empty_like(src)
    for i in range(h):
        s, o = src[i], tmp[i]
        if is_min:
            o[0] = min(min(s[0], s[1]), s[2])
            o[1] = min(min(s[0], s[1]), min(s[2], s[3]))
            for j in range(2, w - 2):
                o[j] = min(min(min(s[j - 2], s[j - 1]), min(s[j], s[j + 1])), s[j + 2])
            o[w - 2] = min(min(s[w - 4], s[w - 3]), min(s[w - 2], s[w - 1]))
            o[w - 1] = min(min(s[w - 3], s[w - 2]), s[w - 1])
        else:
            o[0] = max(max(s[0], s[1]), s[2])
            o[1] = max(max(s[0], s[1]), max(s[2], s[3]))
            for j in range(2, w - 2):
                o[j] = max(max(max(s[j - 2], s[j - 1]), max(s[j], s[j + 1])), s[j + 2])
            o[w - 2] = max(max(s[w - 4], s[w - 3]), max(s[w - 2], s[w - 1]))
            o[w - 1] = max(max(s[w - 3], s[w - 2]), s[w - 1])
    for i in range(h):
        out = dst[i]
        lo, hi = max(i - 2, 0), min(i + 2, h - 1)
        if hi - lo == 4:  # a whole window: each output read and written once (2x faster than a pass per row)
            a, b, c, d, e = tmp[lo], tmp[lo + 1], tmp[lo + 2], tmp[lo + 3], tmp[lo + 4]
            if is_min:
                for j in range(w):
                    out[j] = min(min(min(a[j], b[j]), min(c[j], d[j])), e[j])
            else:
                for j in range(w):
                    out[j] = max(max(max(a[j], b[j]), max(c[j], d[j])), e[j])
            continue
        out[:] = tmp[lo]  # the border rows' windows are cut
        for q in range(lo + 1, hi + 1):
            t = tmp[q]
            if is_min:
                for j in range(w):
                    out[j] = min(out[j], t[j])
            else:
                for j in range(w):
                    out[j] = max(out[j], t[j])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _min_max_filter_3(src: np.ndarray, dst: np.ndarray, is_min: bool) -> None:  # pragma: no cover (compiled)
    """:func:`_min_max_filter` for a 3 x 3 window (h, w >= 2), as :func:`_min_max_filter_5` does a 5 x 5 one: each
    row's window in one pass, then the columns over three rows. Why: the Manhattan grid's IPR (4x4-pixel cells, a
    3-cell window) filters ~500 depth images a rescued indoor frame, and the general path copied the image and
    passed over it four times (155 x 47 cells: ~10 µs of a pose's ~28)."""
    h, w = src.shape
    if h < 2 or w < 2:
        raise ValueError("a 3 x 3 filter here needs an image of at least 2 x 2")
    tmp = np.empty_like(src)
    for i in range(h):
        s, o = src[i], tmp[i]
        if is_min:
            o[0] = min(s[0], s[1])
            for j in range(1, w - 1):
                o[j] = min(min(s[j - 1], s[j]), s[j + 1])
            o[w - 1] = min(s[w - 2], s[w - 1])
        else:
            o[0] = max(s[0], s[1])
            for j in range(1, w - 1):
                o[j] = max(max(s[j - 1], s[j]), s[j + 1])
            o[w - 1] = max(s[w - 2], s[w - 1])
    for i in range(h):
        out = dst[i]
        lo, hi = max(i - 1, 0), min(i + 1, h - 1)
        a, c = tmp[lo], tmp[hi]
        if hi - lo == 2:
            b = tmp[i]
            if is_min:
                for j in range(w):
                    out[j] = min(min(a[j], b[j]), c[j])
            else:
                for j in range(w):
                    out[j] = max(max(a[j], b[j]), c[j])
        elif is_min:  # a border row: its window is cut to two rows
            for j in range(w):
                out[j] = min(a[j], c[j])
        else:
            for j in range(w):
                out[j] = max(a[j], c[j])


def _window_filter(img: torch.Tensor, k: int, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """k x k min or max filter of (B, H, W), windows cut at the border (= ``F.max_pool2d(.., k, 1, k // 2)``).

    Separable, as in-place elementwise ops on shifted views: on CPU this is 10-25x faster than
    ``F.max_pool2d`` for a few single-channel images (a case that kernel does not vectorise well).
    """
    out = img
    for axis in (2, 1):
        src, out = out, out.clone()
        n = src.shape[axis]
        for s in range(1, min(k // 2, n - 1) + 1):
            lo, hi = out.narrow(axis, 0, n - s), out.narrow(axis, s, n - s)
            op(lo, src.narrow(axis, s, n - s), out=lo)
            op(hi, src.narrow(axis, 0, n - s), out=hi)
    return out
