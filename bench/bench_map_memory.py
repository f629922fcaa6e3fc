"""Memory of opening a LiDAR map and gathering submaps, for a map and one 20x larger.

Both maps are synthetic (random points; no simulator): submaps of the same size laid along a line, each holding
its own block of points plus its two neighbours' (overlap, as with real radius > spacing), point rows ordered by
submap as the builder orders them, D = 64 float16 features, Dg = 256 descriptors. The 20x map has 20x the
submaps. Each is written with ``save_map``, evicted from the page cache (``posix_fadvise(DONTNEED)`` on its own
files), then a fresh Python process runs ``load_map`` (full sha256 + content verification) and gathers 100
submaps (cycling through the 1x map's, spread over the 20x map's), keeping only the latest like a localizer,
and reports RSS: after imports, after load, after the gathers, and the peak (``VmHWM``), with the anonymous
and file-backed parts from /proc. Rows with ``release_pages=False`` show what RSS looks like when every touched
page of the memory maps stays mapped.

    .venv/bin/python bench/bench_map_memory.py             # ~1 min on 2 cores; needs ~1 GB free disk
    .venv/bin/python bench/bench_map_memory.py --quick     # 5x instead of 20x
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.geometry import make_T  # noqa: E402
from ep2p_loc_ros.map import LidarMap, save_map  # noqa: E402


def synthetic_map(n_submaps: int, block: int, D: int, Dg: int, seed: int = 0) -> LidarMap:
    """Submaps along x every 10 m; submap s = blocks s-1, s, s+1 (rows contiguous per block)."""
    rng = np.random.default_rng(seed)
    N = n_submaps * block
    points = np.empty((N, 3), np.float32)
    features = np.empty((N, D), np.float16)
    for s in range(n_submaps):  # chunked so the parent never holds float64 copies of the features
        rows = slice(s * block, (s + 1) * block)
        points[rows] = rng.uniform(-20, 20, (block, 3)).astype(np.float32) + np.float32([10.0 * s, 0, 0])
        features[rows] = rng.standard_normal((block, D), dtype=np.float32)
    parts = [np.arange(max(0, s - 1) * block, min(N, (s + 2) * block), dtype=np.int64) for s in range(n_submaps)]
    offsets = np.zeros(n_submaps + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return LidarMap(
        points=points,
        reflectance=rng.uniform(size=N).astype(np.float32),
        features=features,
        descriptors=rng.standard_normal((n_submaps, Dg), dtype=np.float32),
        T_map_viewpoint=np.stack([make_T(np.eye(3), [10.0 * s, 0, 0]) for s in range(n_submaps)]),
        submap_offsets=offsets,
        submap_indices=np.concatenate(parts),
        viewpoint_frame_ids=np.arange(n_submaps, dtype=np.int64),
        params={"synthetic": True, "block": block},
    )


def evict(map_dir: Path) -> None:
    """Drop this map's files from the page cache (only ours: no global drop_caches)."""
    for f in map_dir.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _proc_status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(val.split()[0]) / 1024  # kB -> MiB
    return out


def child(map_dir: str, n_extract: int, release: bool) -> None:
    """Runs in a fresh interpreter: load + gather, print one JSON line."""
    from ep2p_loc_ros.map import load_map, nearest_submaps, top_k_by_descriptor

    base = _proc_status()["VmRSS"]
    t0 = time.perf_counter()
    m = load_map(map_dir, release_pages=release)
    t_load = time.perf_counter() - t0
    after_load = _proc_status()["VmRSS"]
    S = m.num_submaps
    ids = [(i * S) // n_extract for i in range(n_extract)] if n_extract <= S else [i % S for i in range(n_extract)]
    t0 = time.perf_counter()
    checksum, n_points = 0.0, 0
    for i in ids:
        sub = m.submap(i)  # only the latest is kept, as the localizer would
        checksum += float(sub.points[:, 0].sum()) + float(sub.features[:, 0].astype(np.float32).sum())
        n_points += len(sub)
    t_gather = time.perf_counter() - t0
    nearest_submaps(m, [123.0, 0.0, 0.0], k=3)
    top_k_by_descriptor(m, np.ones(m.descriptor_dim), k=3)
    st = _proc_status()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so it would report the parent's RSS.
    peak = st["VmHWM"]
    print(
        json.dumps(
            {
                "points": m.num_points,
                "submaps": S,
                "base": base,
                "after_load": after_load,
                "current": st["VmRSS"],
                "anon": st["RssAnon"],
                "file": st["RssFile"],
                "peak": peak,
                "load_s": t_load,
                "ms_per_submap": 1e3 * t_gather / n_extract,
                "points_per_submap": n_points / n_extract,
                "checksum": checksum,
            }
        )
    )


def measure(map_dir: Path, n_extract: int, release: bool) -> dict:
    evict(map_dir)
    cmd = [sys.executable, __file__, "--child", str(map_dir), "--extract", str(n_extract)]
    cmd += ["--release", str(int(release))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5x instead of 20x")
    ap.add_argument("--submaps", type=int, default=20, help="submaps in the 1x map")
    ap.add_argument("--block", type=int, default=11_000, help="points per submap block (a submap spans 3 blocks)")
    ap.add_argument("--extract", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the maps (default: system temp)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--release", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.extract, bool(args.release))
        return

    scale = 5 if args.quick else 20
    work = Path(tempfile.mkdtemp(prefix="ep2p-bench-map-", dir=args.workdir))
    rows = []
    try:
        for factor in (1, scale):
            t0 = time.perf_counter()
            m = synthetic_map(args.submaps * factor, args.block, D=64, Dg=256, seed=factor)
            path = save_map(m, work / f"map{factor}x")
            del m
            t_build = time.perf_counter() - t0
            disk = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            for release in (True, False):
                r = measure(path, args.extract, release)
                rows.append({"factor": factor, "release": release, "disk": disk, "build_s": t_build, **r})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"# Map memory: load_map + {args.extract} submaps, fresh process each\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"Python {platform.python_version()}; page cache evicted for the map's files before each run (cold load)\n"
    )
    print(
        "| map | release_pages | on disk (MiB) | points | submaps | pts/submap | write (s) | load+verify (s) | "
        "ms/submap | RSS imports | RSS after load | RSS after gathers | peak RSS | RssAnon | RssFile |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['factor']}x | {'on' if r['release'] else 'off'} | {r['disk']:.0f} | {r['points']:,} | "
            f"{r['submaps']} | {r['points_per_submap']:,.0f} | {r['build_s']:.1f} | {r['load_s']:.2f} | "
            f"{r['ms_per_submap']:.2f} | {r['base']:.1f} | {r['after_load']:.1f} | {r['current']:.1f} | "
            f"{r['peak']:.1f} | {r['anon']:.1f} | {r['file']:.1f} |"
        )
    print("\nRSS in MiB. Ratio of the larger map to the 1x map:\n")
    print("| release_pages | peak RSS | peak RSS above imports | RSS after gathers | load time |")
    print("|---|---|---|---|---|")
    for release in (True, False):
        a = next(r for r in rows if r["factor"] == 1 and r["release"] == release)
        b = next(r for r in rows if r["factor"] == scale and r["release"] == release)
        print(
            f"| {'on (default)' if release else 'off'} | {b['peak'] / a['peak']:.3f} | "
            f"{(b['peak'] - b['base']) / (a['peak'] - a['base']):.3f} | {b['current'] / a['current']:.3f} | "
            f"{b['load_s'] / a['load_s']:.1f} |"
        )
    goal = (
        next(r for r in rows if r["factor"] == scale and r["release"])["peak"]
        / next(r for r in rows if r["factor"] == 1 and r["release"])["peak"]
    )
    print(f"\n{scale}x map / 1x map peak RSS = {goal:.3f} (goal < 1.2: {'met' if goal < 1.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
