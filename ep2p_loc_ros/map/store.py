"""The LiDAR map in memory and on disk: a versioned directory of ``.npy`` files that is memory-mapped, never loaded.

On disk (format ``ep2p-loc-map``, version 1)::

    MAP_DIR/
      manifest.json            format, version, frame id, counts, builder params, per array: file, dtype, shape, sha256
      points.npy               (N, 3)    <f4   voxel centroids in the "map" frame
      reflectance.npy          (N,)      <f4
      features.npy             (N, D)    <f2   per-point descriptors (D = 0 until a model fills them)
      descriptors.npy          (S, Dg)   <f4   per-submap global descriptors (Dg = 0 until a model fills them)
      T_map_viewpoint.npy      (S, 4, 4) <f8   reference pose of each submap
      submap_offsets.npy       (S + 1,)  <i8   CSR: submap s holds submap_indices[offsets[s]:offsets[s + 1]]
      submap_indices.npy       (M,)      <i4 or <i8, row numbers into points (sorted within a submap)
      viewpoint_frame_ids.npy  (S,)      <i8   sequence frame of each viewpoint

Why this shape: a map can be far larger than RAM, and the localizer only ever needs a few submaps. ``.npy`` is
mmap-able, has no pickle when loaded with ``allow_pickle=False``, and the CSR index lets one submap be gathered
from the memory maps without touching the rest. The manifest carries sha256 sums, so a truncated or corrupt
map is refused at load, before the node starts serving poses from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npy_format

from .. import __version__
from ..atomic import replace_dir
from ..errors import DataError
from ..geometry import invert, transform_points

__all__ = [
    "ARRAY_SCHEMA",
    "ENVIRONMENTS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "LidarMap",
    "MapFormatError",
    "Submap",
    "load_map",
    "save_map",
]

FORMAT_NAME = "ep2p-loc-map"
# where a map can say it is (builder params' "environment": MapBuildParams.environment, AlignmentConfig.environments)
ENVIRONMENTS = ("outdoor", "indoor", "unknown")
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
FRAME_ID = "map"
_RELEASE_MARGIN = 1 << 20  # bytes either side of gathered rows whose page mappings are dropped, see _drop_mapped_rows
_CHUNK = 4 << 20  # bytes per read when hashing / validating: bounded memory whatever the map size


class MapFormatError(DataError):
    """A map directory that cannot be used as it is (the message names the file and the fault)."""


@dataclass(frozen=True)
class _ArraySpec:
    dtypes: tuple[str, ...]  # accepted little-endian dtype strings; the first is what save_map writes
    ndim: int
    check: str  # content check run while streaming: "finite", "offsets", "indices" or ""


# Field order = write order = validation order (the CSR checks need N and M from the arrays before them).
ARRAY_SCHEMA: dict[str, _ArraySpec] = {
    "points": _ArraySpec(("<f4",), 2, "finite"),
    "reflectance": _ArraySpec(("<f4",), 1, "finite"),
    "features": _ArraySpec(("<f2",), 2, "finite"),
    "descriptors": _ArraySpec(("<f4",), 2, "finite"),
    "T_map_viewpoint": _ArraySpec(("<f8",), 3, "finite"),
    "viewpoint_frame_ids": _ArraySpec(("<i8",), 1, ""),
    "submap_offsets": _ArraySpec(("<i8",), 1, "offsets"),
    "submap_indices": _ArraySpec(("<i4", "<i8"), 1, "indices"),
}


# --------------------------------------------------------------------------- in-memory types


@dataclass(frozen=True)
class Submap:
    """One submap gathered from the map: only its rows, as ordinary (writable, in-RAM) arrays."""

    id: int
    T_map_viewpoint: np.ndarray  # (4, 4) float64
    points: np.ndarray  # (n, 3) float32, map frame
    reflectance: np.ndarray  # (n,) float32
    features: np.ndarray | None  # (n, D) float16; None when gathered with ``features=False``
    descriptor: np.ndarray  # (Dg,) float32
    point_indices: np.ndarray  # (n,) int64 rows of the map, to relate results back to the map
    frame_index: int  # sequence frame the viewpoint was taken from

    def __len__(self) -> int:
        return len(self.points)

    def points_in_viewpoint(self) -> np.ndarray:
        """Points in the viewpoint frame (what a model trained on local clouds expects)."""
        return transform_points(invert(self.T_map_viewpoint), self.points.astype(np.float64)).astype(np.float32)


@dataclass
class LidarMap:
    """The map: arrays (memory-mapped when loaded, in RAM when just built) plus the submap index.

    ``release_pages``: after gathering a submap from memory maps, tell the kernel to drop the mapping of the
    touched pages (``madvise(MADV_DONTNEED)``; read-only file pages stay in the page cache and re-fault
    cheaply). Without it, every page ever touched stays in this process's RSS, so a long-running node that
    visits the whole map would end up 'holding' the whole map.
    """

    points: np.ndarray
    reflectance: np.ndarray
    features: np.ndarray
    descriptors: np.ndarray
    T_map_viewpoint: np.ndarray
    submap_offsets: np.ndarray
    submap_indices: np.ndarray
    viewpoint_frame_ids: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    frame_id: str = FRAME_ID
    path: Path | None = None
    manifest: dict[str, Any] | None = None
    release_pages: bool = True

    def __post_init__(self) -> None:
        where = str(self.path) if self.path else "map"
        _check_shapes(_array_shapes(self, where), where)

    # ---- sizes
    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_submaps(self) -> int:
        return int(self.T_map_viewpoint.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def descriptor_dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def viewpoint_positions(self) -> np.ndarray:
        """(S, 3) float64 viewpoint positions in the map frame (small: read in full)."""
        return np.array(self.T_map_viewpoint[:, :3, 3], dtype=np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_SCHEMA}

    # ---- submaps
    def submap_point_indices(self, i: int) -> np.ndarray:
        """Row numbers of submap ``i`` (int64, sorted)."""
        i = self._check_submap_id(i)
        start, stop = int(self.submap_offsets[i]), int(self.submap_offsets[i + 1])
        idx = np.array(self.submap_indices[start:stop], dtype=np.int64)
        self._release(self.submap_indices, start, stop)
        return idx

    def submap(self, i: int, features: bool = True) -> Submap:
        """Gather submap ``i``: reads only its rows (and their pages) from the memory maps.

        ``features=False`` leaves its point features unread (``Submap.features`` is None): they are most of a
        submap's bytes, and localization matches only a few thousand of its points, whose features
        :meth:`point_features` then reads.
        """
        i = self._check_submap_id(i)
        idx = self.submap_point_indices(i)
        return Submap(
            id=i,
            T_map_viewpoint=np.array(self.T_map_viewpoint[i], dtype=np.float64),
            points=self._gather(self.points, idx),
            reflectance=self._gather(self.reflectance, idx),
            features=self._gather(self.features, idx) if features else None,
            descriptor=np.array(self.descriptors[i], dtype=np.float32),
            point_indices=idx,
            frame_index=int(self.viewpoint_frame_ids[i]),
        )

    def point_features(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 features of the map rows ``rows`` (sorted int64, e.g. ``point_indices`` of
        some submap points)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.num_points or np.any(np.diff(rows) < 0)):
            raise IndexError(f"point_features needs sorted rows within [0, {self.num_points})")
        return self._gather(self.features, rows).astype(np.float32)

    def iter_submaps(self) -> Iterator[Submap]:
        for i in range(self.num_submaps):
            yield self.submap(i)

    def _check_submap_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_submaps:
            raise IndexError(f"submap {i} does not exist (the map has {self.num_submaps})")
        return i

    def _gather(self, arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.asarray(arr[idx]) if len(idx) else np.empty((0, *arr.shape[1:]), arr.dtype)
        if len(idx):
            self._release(arr, int(idx[0]), int(idx[-1]) + 1)
        return out

    def _release(self, arr: np.ndarray, row_start: int, row_stop: int) -> None:
        if self.release_pages and row_stop > row_start:
            _drop_mapped_rows(arr, row_start, row_stop)


def _drop_mapped_rows(arr: np.ndarray, row_start: int, row_stop: int) -> None:
    """madvise(MADV_DONTNEED) on the pages holding rows [row_start, row_stop) of a ``np.load`` memmap.

    Relies on numpy's memmap layout (``_mmap`` starts at the file offset rounded down to the allocation
    granularity); anything else (in-RAM array, view, platform without madvise) is left alone.
    """
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if not isinstance(arr, np.memmap) or arr.base is not mm:
        return
    row_bytes = arr.strides[0] if arr.ndim else arr.itemsize
    if row_bytes <= 0:
        return
    delta = int(arr.offset) % mmap.ALLOCATIONGRANULARITY
    page = mmap.PAGESIZE
    # The margin covers the kernel's fault-around, which maps cached neighbour pages (64 KiB by default) on
    # each fault: without it, those would stay mapped past the gathered rows and accumulate submap by submap.
    start = max(0, delta + row_start * row_bytes - _RELEASE_MARGIN) // page * page
    stop = min(len(mm), delta + row_stop * row_bytes + _RELEASE_MARGIN)
    if stop > start:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


# --------------------------------------------------------------------------- consistency checks


def _check_shapes(shapes: dict[str, tuple[int, ...]], where: str, name_of: Callable[[str], str] | None = None) -> None:
    """Cross-array shape rules, on shapes only (no data read). ``name_of`` maps an array to its file name."""
    name_of = name_of or (lambda a: a)
    for name, spec in ARRAY_SCHEMA.items():
        if len(shapes[name]) != spec.ndim:
            raise MapFormatError(f"{where}: {name_of(name)}: expected {spec.ndim} dimensions, got shape {shapes[name]}")
    N, S = shapes["points"][0], shapes["T_map_viewpoint"][0]
    rules = [
        ("points", shapes["points"][1:] == (3,), "(N, 3)"),
        ("reflectance", shapes["reflectance"] == (N,), f"({N},) like points"),
        ("features", shapes["features"][0] == N, f"({N}, D) like points"),
        ("T_map_viewpoint", shapes["T_map_viewpoint"][1:] == (4, 4), "(S, 4, 4)"),
        ("descriptors", shapes["descriptors"][0] == S, f"({S}, Dg), one row per submap"),
        ("viewpoint_frame_ids", shapes["viewpoint_frame_ids"] == (S,), f"({S},), one per submap"),
        ("submap_offsets", shapes["submap_offsets"] == (S + 1,), f"({S + 1},) = submaps + 1"),
    ]
    for name, ok, want in rules:
        if not ok:
            raise MapFormatError(
                f"{where}: {name_of(name)}: shape {shapes[name]} does not match the map, expected {want}"
            )


def _array_shapes(m: LidarMap, where: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name in ARRAY_SCHEMA:
        arr = getattr(m, name)
        if not isinstance(arr, np.ndarray):
            raise MapFormatError(f"{where}: {name}: expected a numpy array, got {type(arr).__name__}")
        shapes[name] = tuple(int(s) for s in arr.shape)
    return shapes


class _ContentCheck:
    """Streaming content validation: fed consecutive chunks of one array, raises on the first fault."""

    def __init__(self, kind: str, label: str, num_points: int, num_indices: int) -> None:
        self.kind, self.label = kind, label
        self.num_points, self.num_indices = num_points, num_indices
        self.seen = 0  # elements seen so far
        self.last: int | None = None
        self.first: int | None = None

    def feed(self, values: np.ndarray) -> None:
        flat = values.reshape(-1)
        if self.kind == "finite" and flat.size and not np.isfinite(flat).all():
            bad = self.seen + int(np.flatnonzero(~np.isfinite(flat))[0])
            raise MapFormatError(f"{self.label}: contains NaN/Inf (first at flat element {bad})")
        if self.kind == "indices" and flat.size:
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= self.num_points:
                raise MapFormatError(
                    f"{self.label}: CSR index out of range: values span [{lo}, {hi}] but the map has "
                    f"{self.num_points} points"
                )
        if self.kind == "offsets" and flat.size:
            v = flat.astype(np.int64, copy=False)
            if self.first is None:
                self.first = int(v[0])
            prev = np.concatenate([[v[0] if self.last is None else self.last], v[:-1]])
            bad = np.flatnonzero(v < prev)
            if bad.size:
                raise MapFormatError(
                    f"{self.label}: CSR offsets not monotonic (entry {self.seen + int(bad[0])} decreases)"
                )
            self.last = int(v[-1])
        self.seen += flat.size

    def finish(self) -> None:
        if self.kind == "offsets":
            if self.first != 0:
                raise MapFormatError(f"{self.label}: CSR offsets must start at 0, got {self.first}")
            if self.last != self.num_indices:
                raise MapFormatError(
                    f"{self.label}: CSR offsets end at {self.last} but submap_indices has {self.num_indices} entries"
                )


def _check_content_in_memory(m: LidarMap, where: str) -> None:
    """The same content rules as the loader, on arrays about to be saved (chunked: works on memmaps too)."""
    for name, spec in ARRAY_SCHEMA.items():
        if not spec.check:
            continue
        arr = getattr(m, name)
        chk = _ContentCheck(spec.check, f"{where}: {name}", m.num_points, m.submap_indices.shape[0])
        rows = max(1, _CHUNK // max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))))
        for start in range(0, arr.shape[0], rows):
            chk.feed(np.asarray(arr[start : start + rows]))
        chk.finish()
    T = np.asarray(m.T_map_viewpoint)
    if len(T) and not np.allclose(T[:, 3, :], [0.0, 0.0, 0.0, 1.0]):
        raise MapFormatError(f"{where}: T_map_viewpoint: last row of a pose must be [0, 0, 0, 1]")


# --------------------------------------------------------------------------- saving


class _HashingWriter:
    """File-like object that hashes what np.save writes (no second read of the file)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        return self.f.write(data)


def _is_replaceable(path: Path) -> bool:
    """Only an existing map (or an empty directory) may be replaced: never someone's other directory."""
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def save_map(lidar_map: LidarMap, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``lidar_map`` to directory ``path`` atomically; returns the path.

    Everything is written into a temporary directory next to ``path`` and fsync'd, then swapped in with one
    rename (an atomic exchange when replacing, on Linux), so a reader or a crash sees the old map or the new
    one, never a mixture. Only an existing map or an empty directory is replaced (``overwrite``); any other
    existing path is refused. Arrays are streamed (memmap inputs are never loaded whole).
    """
    path = Path(path).absolute()
    where = str(path)
    m = lidar_map
    _check_shapes(_array_shapes(m, where), where)
    _check_content_in_memory(m, where)
    try:
        params_json = json.loads(json.dumps(m.params, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise MapFormatError(f"{where}: builder params are not JSON-serialisable ({exc})") from exc
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path}: exists (pass overwrite=True to replace a map)")
        if not _is_replaceable(path):
            raise FileExistsError(f"{path}: exists and is not an {FORMAT_NAME} map directory; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)

    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, spec in ARRAY_SCHEMA.items():
            arr = getattr(m, name)
            dtype = np.dtype(spec.dtypes[0])
            if name == "submap_indices":  # int32 when every row number fits: half the index size
                dtype = np.dtype("<i4") if m.num_points < 2**31 else np.dtype("<i8")
            entries[name] = _write_array(tmp / f"{name}.npy", arr, dtype)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "frame_id": m.frame_id,
            "created_by": f"ep2p_loc_ros {__version__}",
            "counts": {
                "points": m.num_points,
                "submaps": m.num_submaps,
                "submap_entries": int(m.submap_indices.shape[0]),
                "feature_dim": m.feature_dim,
                "descriptor_dim": m.descriptor_dim,
            },
            "arrays": entries,
            "builder": params_json,
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        replace_dir(tmp, path)
        return path
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_array(path: Path, arr: np.ndarray, dtype: np.dtype) -> dict[str, Any]:
    """np.save in chunks (converting dtype chunk by chunk), hashing as it writes; fsync'd."""
    shape = tuple(int(s) for s in arr.shape)
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        npy_format.write_array_header_1_0(w, header)
        row_bytes = max(1, dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)))
        rows = max(1, _CHUNK // row_bytes)
        for start in range(0, shape[0], rows):
            chunk = np.ascontiguousarray(arr[start : start + rows], dtype=dtype)
            if chunk.size:
                w.write(memoryview(chunk.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "dtype": dtype.str, "shape": list(shape), "sha256": w.sha.hexdigest()}


# --------------------------------------------------------------------------- loading


def _read_header(f: BinaryIO, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header without reading data (numpy parses it with ast.literal_eval: no pickle)."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError) as exc:
        raise MapFormatError(f"{label}: not a readable .npy file ({exc})") from exc


def _stream_check(
    f: BinaryIO, data_offset: int, dtype: np.dtype, check: _ContentCheck | None, sha: Any
) -> MapFormatError | None:
    """One pass over the file in fixed-size chunks: sha256 of every byte, and the content check on the data.

    A content fault is returned rather than raised, so a corrupt file is reported as a checksum mismatch
    (the real cause) rather than as whatever garbage the flipped bytes decode to.
    """
    f.seek(0)
    sha.update(f.read(data_offset))
    chunk = max(dtype.itemsize, _CHUNK // dtype.itemsize * dtype.itemsize)
    buf = bytearray(chunk)
    view = memoryview(buf)
    fault: MapFormatError | None = None
    while True:
        n = f.readinto(view)
        if not n:
            break
        sha.update(view[:n])
        if check is not None and fault is None:
            try:
                check.feed(np.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize))
            except MapFormatError as exc:
                fault = exc
    if check is not None and fault is None:
        try:
            check.finish()
        except MapFormatError as exc:
            fault = exc
    return fault


def _manifest_error(manifest_path: Path, fault: str) -> MapFormatError:
    return MapFormatError(f"{manifest_path}: {fault}")


def _read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not root.is_dir():
        raise MapFormatError(f"{root}: not a map directory (does not exist or is not a directory)")
    if not mpath.is_file():
        raise _manifest_error(mpath, "missing: not an ep2p-loc map directory (no manifest)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _manifest_error(mpath, f"not valid JSON (not UTF-8 text: {exc})") from exc
    except json.JSONDecodeError as exc:
        raise _manifest_error(mpath, f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _manifest_error(mpath, "not a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT_NAME:
        raise _manifest_error(mpath, f"wrong format name {fmt!r}, expected {FORMAT_NAME!r}")
    ver = manifest.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver not in SUPPORTED_VERSIONS:
        hint = " (newer than this build: upgrade ep2p_loc_ros)" if isinstance(ver, int) and ver > FORMAT_VERSION else ""
        raise _manifest_error(
            mpath, f"unsupported format_version {ver!r}{hint}; this build reads {list(SUPPORTED_VERSIONS)}"
        )
    if manifest.get("frame_id") != FRAME_ID:
        raise _manifest_error(mpath, f"frame_id must be {FRAME_ID!r}, got {manifest.get('frame_id')!r}")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict):
        raise _manifest_error(mpath, "'arrays' missing or not an object")
    for name in ARRAY_SCHEMA:
        entry = arrays.get(name)
        if not isinstance(entry, dict):
            raise _manifest_error(mpath, f"array {name!r} missing from 'arrays'")
        file, dt, shape, sha = entry.get("file"), entry.get("dtype"), entry.get("shape"), entry.get("sha256")
        if not isinstance(file, str) or not file.endswith(".npy") or Path(file).name != file or file.startswith("."):
            raise _manifest_error(mpath, f"array {name!r}: file {file!r} must be a plain '*.npy' name inside the map")
        allowed = list(ARRAY_SCHEMA[name].dtypes)
        if dt not in allowed:
            raise _manifest_error(mpath, f"array {name!r}: dtype {dt!r} not allowed, expected one of {allowed}")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise _manifest_error(mpath, f"array {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise _manifest_error(mpath, f"array {name!r}: sha256 {sha!r} is not a 64-digit lowercase hex digest")
    builder = manifest.get("builder", {})
    if not isinstance(builder, dict):
        raise _manifest_error(mpath, "'builder' must be an object")
    return manifest


def load_map(path: str | Path, *, verify: bool = True, release_pages: bool = True) -> LidarMap:
    """Open a map directory: validate it, then memory-map every array (read-only; no array is read whole).

    Checks, each failing with :class:`MapFormatError` naming the file and the fault: manifest present, JSON,
    right format name and a supported version; every array file present, a real ``.npy`` (an object/pickled
    array is refused from its header, never unpickled), dtype and shape as the manifest says and consistent
    across arrays, size exactly header + data (truncation); and with ``verify`` (default) one streamed pass per
    file checking sha256 and content: finite floats, CSR offsets start at 0, never decrease and end at the
    number of indices, indices within ``[0, N)``. ``verify=False`` skips that pass (all bytes read once) for a
    map already verified on this machine; the header, shape and size checks always run.
    """
    root = Path(path)
    manifest = _read_manifest(root)
    mpath = root / MANIFEST
    entries = manifest["arrays"]
    # Shapes from the manifest give N, S, M before any file is opened, so checks can name the right file.
    shapes = {name: tuple(entries[name]["shape"]) for name in ARRAY_SCHEMA}
    files = {name: entries[name]["file"] for name in ARRAY_SCHEMA}
    _check_shapes(shapes, str(mpath), name_of=lambda a: f"array {a!r}")
    N = shapes["points"][0] if shapes["points"] else 0
    M = shapes["submap_indices"][0] if shapes["submap_indices"] else 0

    arrays: dict[str, np.ndarray] = {}
    for name, spec in ARRAY_SCHEMA.items():
        entry = entries[name]
        fpath = root / entry["file"]
        label = str(fpath)
        if not fpath.is_file():
            raise MapFormatError(f"{label}: array file missing (listed for {name!r} in {mpath.name})")
        with open(fpath, "rb") as f:
            shape, fortran, dtype = _read_header(f, label)
            data_offset = f.tell()
            if dtype.hasobject:
                raise MapFormatError(f"{label}: holds a Python-object (pickled) array; refused without unpickling")
            if dtype.str != entry["dtype"]:
                raise MapFormatError(f"{label}: dtype {dtype.str} does not match the manifest ({entry['dtype']})")
            if tuple(shape) != shapes[name]:
                raise MapFormatError(f"{label}: shape {tuple(shape)} does not match the manifest ({shapes[name]})")
            if fortran and len(shape) > 1:
                raise MapFormatError(f"{label}: Fortran-ordered array; the map format stores C order")
            expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
            if size < expected:
                raise MapFormatError(f"{label}: truncated: {size} bytes, header and shape need {expected}")
            if size > expected:
                raise MapFormatError(f"{label}: {size - expected} unexpected trailing bytes after the array data")
            if verify:
                sha = hashlib.sha256()
                check = _ContentCheck(spec.check, label, N, M) if spec.check else None
                fault = _stream_check(f, data_offset, dtype, check, sha)
                if sha.hexdigest() != entry["sha256"]:
                    raise MapFormatError(
                        f"{label}: sha256 mismatch (file {sha.hexdigest()[:16]}…, manifest {entry['sha256'][:16]}…): "
                        "corrupt or modified"
                    )
                if fault is not None:
                    raise fault
        try:
            arrays[name] = np.load(fpath, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise MapFormatError(f"{label}: cannot memory-map ({exc})") from exc

    T = arrays["T_map_viewpoint"]
    if verify and len(T) and not np.allclose(T[:, 3, :], [0.0, 0.0, 0.0, 1.0]):
        raise MapFormatError(f"{root / files['T_map_viewpoint']}: last row of a pose must be [0, 0, 0, 1]")
    counts = manifest.get("counts", {})
    if not isinstance(counts, dict):
        raise _manifest_error(mpath, "'counts' must be an object")
    for key, name in (("points", "points"), ("submaps", "T_map_viewpoint")):
        if key in counts and counts[key] != shapes[name][0]:
            raise _manifest_error(mpath, f"counts.{key} = {counts[key]} but {files[name]} holds {shapes[name][0]}")
    return LidarMap(
        **arrays,
        params=dict(manifest.get("builder", {})),
        frame_id=manifest["frame_id"],
        path=root,
        manifest=manifest,
        release_pages=release_pages,
    )
