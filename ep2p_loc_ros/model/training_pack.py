"""Training packs: one sequence's training data in one compact ``.npz``, for training where the sequence is not.

``ep2p-loc train`` needs, per sequence, its fused LiDAR map and, per frame, the pose and the image at the network
size. A KITTI-layout sequence holds far more: every raw scan (the map is fused from them at load time, which needs
the map builder) and full-size PNG images, 386 MB for a 150-frame synthetic world. A pack keeps only what training
reads: the fused map exactly as the map builder made it (float32 points and reflectance), the poses, the camera,
and each image already resized to the network size (``cv2.INTER_AREA``, as ``prepare_image`` does) and stored as
JPEG: about 10 MB for the same world. So several worlds fit where bulk data cannot travel (e.g. the 64 MiB that
may be carried to a lent GPU machine), and training from a pack needs neither Open3D nor the map builder.

The one loss is JPEG's on the images (quality 95 by default); everything else is bit-identical to what
:class:`~.dataset.SequenceData` builds from the directory. A pack is made for one network image size and is
refused by a model of another size. Written atomically; read with ``allow_pickle=False`` and checked, so a corrupt,
truncated or version-mismatched pack gives a ``DataError`` that names it.

    ep2p-loc pack-training data/train_o1 --out packs/train_o1.npz
    ep2p-loc train packs/train_o1.npz packs/train_i11.npz --out models_new ...
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from ..geometry import PinholeCamera
from .config import ModelConfig
from .preprocess import camera_for_network, prepare_image, resize_rgb

__all__ = ["PACK_FORMAT_VERSION", "TrainingPack", "write_training_pack"]

PACK_FORMAT_VERSION = 1
PACK_KIND = "ep2p_loc_ros training pack"
_KEYS = (
    "kind",
    "format_version",
    "source",
    "map_voxel",
    "camera_size",
    "K",
    "dist",
    "image_size",
    "T_world_cam",
    "points",
    "reflectance",
    "jpeg",
    "jpeg_offsets",
)


class TrainingPack:
    """A pack read back: the frame source :class:`~.dataset.SequenceData` takes in place of a sequence directory.

    ``points``/``reflectance`` are the fused map, ``camera`` the full-size camera, ``T_world_cam(i)`` a frame's
    pose and ``network_image(i, config)`` its image at the network size with the camera scaled to it.
    """

    def __init__(self, path: str | Path, map_voxel: float | None = None) -> None:
        self.root = Path(path)
        arrays = _load(self.root)
        src = str(self.root)
        try:  # fields of the wrong shape or type: one clear error, not a crash further on
            self.camera = PinholeCamera(
                int(arrays["camera_size"][0]), int(arrays["camera_size"][1]), arrays["K"], arrays["dist"]
            )
            self.map_voxel = float(arrays["map_voxel"])
            self.image_size = tuple(int(v) for v in arrays["image_size"])
            self.poses = np.asarray(arrays["T_world_cam"], dtype=np.float64)
        except (TypeError, ValueError, IndexError) as exc:  # CameraError is a ValueError
            raise DataError(f"{src}: malformed training pack ({exc})") from exc
        if map_voxel is not None and not np.isclose(self.map_voxel, map_voxel):
            raise DataError(f"{src}: packed with a {self.map_voxel} m map voxel, training asks for {map_voxel} m")
        self.points = arrays["points"]
        self.reflectance = arrays["reflectance"]
        self._jpeg = arrays["jpeg"]
        self._offsets = arrays["jpeg_offsets"]
        self.source = str(arrays["source"])
        n = len(self.poses)
        checks = (
            (self.poses.ndim == 3 and self.poses.shape[1:] == (4, 4), "T_world_cam must be (F, 4, 4)"),
            (np.isfinite(self.poses).all(), "T_world_cam has NaN/Inf"),
            (
                self.points.ndim == 2 and self.points.shape[1] == 3 and self.points.dtype == np.float32,
                "points must be (N, 3) float32",
            ),
            (np.isfinite(self.points).all(), "points have NaN/Inf"),
            (
                self.reflectance.shape == (len(self.points),) and self.reflectance.dtype == np.float32,
                "reflectance must be (N,) float32, one per point",
            ),
            (len(self.image_size) == 2 and min(self.image_size) > 0, "image_size must be (width, height) > 0"),
            (self._jpeg.dtype == np.uint8 and self._jpeg.ndim == 1, "jpeg must be a uint8 byte buffer"),
            (
                self._offsets.shape == (n + 1,)
                and self._offsets[0] == 0
                and self._offsets[-1] == len(self._jpeg)
                and bool(np.all(np.diff(self._offsets) > 0)),
                "jpeg_offsets do not delimit one image per frame",
            ),
            (self.map_voxel > 0, "map_voxel must be > 0"),
        )
        for ok, message in checks:
            if not ok:
                raise DataError(f"{src}: {message}")

    def __len__(self) -> int:
        return len(self.poses)

    def T_world_cam(self, i: int) -> np.ndarray:
        return self.poses[i]

    def network_image(self, i: int, config: ModelConfig) -> tuple[np.ndarray, PinholeCamera]:
        """Frame ``i``'s image as the network takes it (float32 (1, 3, h, w) in [0, 1]) and the camera scaled to
        it; a ``DataError`` if the pack was made for another network size or the image does not decode."""
        w, h = self.image_size
        if (w, h) != (config.image_width, config.image_height):
            raise DataError(
                f"{self.root}: packed for {w}x{h} network images, the model takes "
                f"{config.image_width}x{config.image_height}; pack the sequence again for it"
            )
        buf = self._jpeg[self._offsets[i] : self._offsets[i + 1]]
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (h, w):
            raise DataError(f"{self.root}: image {i} does not decode to {w}x{h}")
        cam_net = camera_for_network(self.camera, config)
        image, _ = prepare_image(np.ascontiguousarray(bgr[..., ::-1]), cam_net, config, f"{self.root}[{i}]")
        return image, cam_net


def _load(path: Path) -> dict[str, np.ndarray]:
    """Every array of the pack, read without pickle, or a ``DataError`` that says what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: not a training pack (missing {missing})")
            arrays = {k: z[k] for k in _KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: cannot read training pack ({type(exc).__name__}: {exc})") from exc
    if str(arrays["kind"]) != PACK_KIND:
        raise DataError(f"{path}: not a training pack (kind {str(arrays['kind'])!r})")
    try:
        version = int(arrays["format_version"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed training pack (format_version: {exc})") from exc
    if version != PACK_FORMAT_VERSION:
        raise DataError(
            f"{path}: training pack format_version {version} is not supported (expected "
            f"{PACK_FORMAT_VERSION}); pack the sequence again"
        )
    return arrays


def write_training_pack(
    sequence_dir: str | Path,
    out: str | Path,
    config: ModelConfig | None = None,
    map_voxel: float = 0.2,
    jpeg_quality: int = 95,
    progress: bool = True,
) -> Path:
    """Pack a KITTI-layout sequence for training a model of ``config``'s image size; returns the pack's path.

    The map is fused exactly as :class:`~.dataset.SequenceData` fuses it (``map_voxel``), so training from the
    pack sees the same points. Written to a temporary sibling, fsynced, then renamed over ``out``.
    """
    from tqdm import tqdm

    from .dataset import SequenceFrames

    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    config = config or ModelConfig()
    out = Path(out)
    frames = SequenceFrames(sequence_dir, map_voxel, progress)
    seq = frames.seq
    chunks, offsets = [], [0]
    for i in tqdm(range(len(seq)), desc="pack", unit="frame", disable=not progress):
        small = resize_rgb(seq.image(i), config)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise DataError(f"{seq.image_paths[i]}: JPEG encoding failed")
        chunks.append(buf.reshape(-1))
        offsets.append(offsets[-1] + len(buf))
    cam = frames.camera
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                kind=np.array(PACK_KIND),
                format_version=np.array(PACK_FORMAT_VERSION, dtype=np.int64),
                source=np.array(str(Path(sequence_dir).resolve())),
                map_voxel=np.array(map_voxel, dtype=np.float64),
                camera_size=np.array([cam.width, cam.height], dtype=np.int64),
                K=cam.K,
                dist=cam.dist,
                image_size=np.array([config.image_width, config.image_height], dtype=np.int64),
                T_world_cam=np.stack([frames.T_world_cam(i) for i in range(len(seq))]).astype(np.float64),
                points=np.asarray(frames.points, dtype=np.float32),
                reflectance=np.asarray(frames.reflectance, dtype=np.float32),
                jpeg=np.concatenate(chunks) if chunks else np.zeros(0, np.uint8),
                jpeg_offsets=np.asarray(offsets, dtype=np.int64),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
