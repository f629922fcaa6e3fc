"""``ep2p-loc demo``: the whole evaluation loop on the shipped demo drive, with progress, in a few minutes.

ensure_demo_data (drive + map, cached) -> make-bag (OUT/bag) -> replay through the node over DDS (OUT/result)
-> evaluate against the bag's ground truth -> report (OUT/report: report.md, PNGs, summary.json) -> table.

By default the images go to the node in lockstep (each once the node has answered the previous one), so every
frame is processed whatever the machine; ``--rate R`` plays on the bag's timestamps at R x instead (then the
node drops what it cannot keep up with, and the report counts it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

__all__ = ["DEMO_ODOMETRY_DRIFT", "run_demo"]

# The demo bag's odometry errs like a real one (sim/odometry.py): 1 % of each step's length and 0.02 degrees per
# metre. Drift-free odometry would make map->odom exactly constant and flatter the node's fusion over time.
DEMO_ODOMETRY_DRIFT = (0.01, 0.02)


def _step(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", flush=True)


def run_demo(
    out: str | Path = "reports/demo",
    frames: int | None = None,
    rate: float | None = None,
    json_out: bool = False,
    storage: str = "mcap",
    params: dict | None = None,
    progress: bool = True,
    odometry_drift: tuple[float, float] = DEMO_ODOMETRY_DRIFT,
    kind: str = "outdoor",
) -> int:
    """The demo on the ``kind`` drive (``demo_data.DEMO_SIMS``); 0 when it ran."""
    from .demo_data import DEMO_SIMS, ensure_demo_data
    from .evaluation.report import _clean, format_table, write_summary_json
    from .evaluation.trajectory import evaluate_result, load_result
    from .ros.bags import sequence_to_bag
    from .ros.replay import ReplayOptions, match_frame_in_process, pick_domain_id, replay_bag

    t0 = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["ROS_DOMAIN_ID"] = str(pick_domain_id())  # a DDS domain of its own unless the caller set one
    n = 4
    if kind not in DEMO_SIMS:
        raise ValueError(f"demo kind {kind!r}: expected one of {', '.join(DEMO_SIMS)}")
    _step(1, n, f"demo data: the held-out synthetic {kind} drive and its LiDAR map (generated once, then cached)")
    data = ensure_demo_data(sim=DEMO_SIMS[kind], progress=progress)
    print(f"  sequence {data.sequence_dir}\n  map      {data.map_dir}\n  model    {data.model_dir}")

    _step(2, n, "make-bag: the drive as a ROS 2 bag")
    bag = out / "bag"
    if bag.exists():
        if not (bag / "metadata.yaml").is_file():
            raise FileExistsError(f"{bag}: exists and is not a bag; refusing to replace it")
        shutil.rmtree(bag)
    info = sequence_to_bag(
        data.sequence_dir, bag, storage=storage, max_frames=frames, progress=progress, odometry_drift=odometry_drift
    )
    drift = f"odometry drift {100 * odometry_drift[0]:g} % of the distance, {odometry_drift[1]:g}°/m"
    print(f"  {len(info.frames)} frames, {info.size_bytes / 1e6:.0f} MB -> {bag} ({drift})")

    mode = "in lockstep (every frame processed)" if rate is None else f"at {rate:g}x the recorded speed"
    _step(
        3,
        n,
        f"replay: the node localizes the bag's images over DDS, {mode} (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']})",
    )
    opts = ReplayOptions(
        rate=rate or 1.0, lockstep=rate is None, params=dict(params or {}), progress=progress, startup_timeout_s=180.0
    )
    report_dir = out / "report"
    result = replay_bag(bag, data.map_dir, data.model_dir, out / "result", opts)

    _step(4, n, "evaluate: poses against the ground truth, and the report")
    match = match_frame_in_process(result, bag, data.map_dir, data.model_dir, opts)
    summary = evaluate_result(result, bag, out_dir=report_dir, match_frame=match)
    load_result(result, bag).write_tum(result)
    summary["wall_s"] = time.monotonic() - t0
    summary["odometry_drift"] = {"fraction": odometry_drift[0], "deg_per_m": odometry_drift[1]}
    summary["drive"] = {"kind": kind, "seed": DEMO_SIMS[kind].seed, "sequence": str(data.sequence_dir)}
    write_summary_json(summary, report_dir / "summary.json")
    print(format_table(summary))
    print(f"report: {report_dir / 'report.md'}")
    print(f"demo finished in {summary['wall_s']:.0f} s")
    if json_out:
        print(json.dumps(_clean(summary), indent=2))
    return 0
