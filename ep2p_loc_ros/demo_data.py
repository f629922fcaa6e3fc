"""The demo data set: a held-out synthetic drive and its LiDAR map, made on first use and cached.

Why generated and not committed: the drive is a pure function of its :class:`SimConfig` (same seed, same
bytes), so shipping the seed ships the data. A 40-frame drive is ~100 MB of scans and PNGs; generating it takes
under a minute on 2 cores, and the map with the shipped model's features another ~30 s. The world seed is one
that training never used (training seeds are listed in ``models/README.md``).

The cache key holds the sim config and the model's weights hash, so a new model rebuilds the map, never
reuses features from another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .sim.writer import SimConfig

__all__ = ["DEFAULT_CACHE", "DEFAULT_MODEL_DIR", "DEMO_SIM", "DEMO_SIMS", "DemoData", "ensure_demo_data"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "models"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "demo"
DEMO_SIM = SimConfig(kind="outdoor", frames=40, seed=777)
# ``ep2p-loc demo --kind``: the outdoor drive (the README's) or an indoor one (a corridor, a 90 degree turn on the spot
# and back; same seed, another world)
DEMO_SIMS = {"outdoor": DEMO_SIM, "indoor": SimConfig(kind="indoor", frames=40, seed=777)}
# metres of path between submap viewpoints (bench/eval_model.py's held-out drives use the same)
MAP_SPACING_M = {"outdoor": 10.0, "indoor": 4.0}


@dataclass(frozen=True)
class DemoData:
    sequence_dir: Path  # KITTI odometry layout
    map_dir: Path  # built from the sequence's scans with the model's features
    model_dir: Path


def _model_hash(model_dir: Path) -> str:
    from .model.network import CONFIG_FILE, WEIGHTS_FILE

    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(model_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _usable_map(map_dir: Path) -> bool:
    """A complete map is there (a crashed build leaves only a temp dir, which is never ``map_dir``)."""
    from .map import load_map

    if not map_dir.exists():
        return False
    try:
        load_map(map_dir, verify=False)
    except ValueError:
        return False
    return True


def ensure_demo_data(
    cache_dir: str | Path = DEFAULT_CACHE,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    sim: SimConfig = DEMO_SIM,
    progress: bool = True,
) -> DemoData:
    """Generate (or reuse) the demo drive and build (or reuse) its map for ``model_dir``."""
    from .map import MapBuildParams, build_map, save_map
    from .model.features import submap_feature_fn
    from .sim.writer import generate_sequence

    cache_dir, model_dir = Path(cache_dir), Path(model_dir)
    sim_key = hashlib.sha256(json.dumps(asdict(sim), sort_keys=True).encode()).hexdigest()[:12]
    seq_dir = cache_dir / f"{sim.kind}-seed{sim.seed}-{sim.frames}f-{sim_key}"
    if not (seq_dir / "sim.json").exists():
        if progress:
            print(f"demo data: generating the {sim.frames}-frame {sim.kind} drive (seed {sim.seed}) -> {seq_dir}")
        generate_sequence(seq_dir, sim, progress=progress)
    map_dir = cache_dir / f"map-{seq_dir.name}-model{_model_hash(model_dir)}"
    if not _usable_map(map_dir):
        if progress:
            print(f"demo data: building the map with {model_dir} features -> {map_dir}")
        from .datasets.kitti_odometry import KittiOdometrySequence

        camera = KittiOdometrySequence(seq_dir).calib.camera
        lidar_map = build_map(
            seq_dir,
            MapBuildParams(spacing=MAP_SPACING_M[sim.kind]),
            submap_feature_fn(model_dir, camera),
            feature_model=str(model_dir),
            progress=progress,
        )
        save_map(lidar_map, map_dir)
    return DemoData(seq_dir, map_dir, model_dir)
