"""Report of a localization run: ``report.md`` + PNG plots + ``summary.json`` + TUM trajectories.

Plots: top-down trajectory against ground truth, error over time, error CDF, latency histogram, one frame with its
2D-3D matches drawn (inliers green, outliers red), and each localization's confidence where the run recorded it.
Matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..pose_confidence import right_poses
from .metrics import RECALL_THRESHOLDS, pose_errors
from .trajectory import Run, per_frame_errors

__all__ = ["format_table", "plot_matches", "write_report", "write_summary_json"]

PLOTS = {
    "trajectory": "trajectory_topdown.png",
    "errors": "error_over_time.png",
    "cdf": "error_cdf.png",
    "latency": "latency_hist.png",
    "matches": "matches.png",
    "confidence": "confidence.png",
}


def _fmt(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def table_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows shared by the terminal table and the markdown report."""
    rows = [
        ("frames played", _fmt(summary["frames"])),
        ("localized", f"{summary['localized_frames']} ({100 * summary['localized']:.1f}%)"),
    ]
    for name, (m, deg) in RECALL_THRESHOLDS.items():
        rows.append((f"recall @ {m:g} m, {deg:g}°", f"{100 * summary['recall'][name]:.1f}%"))
    te, re = summary["translation_error_m"], summary["rotation_error_deg"]
    rows += [
        ("translation error median / p90 / max", f"{_fmt(te['median'])} / {_fmt(te['p90'])} / {_fmt(te['max'])} m"),
        ("rotation error median / p90 / max", f"{_fmt(re['median'])} / {_fmt(re['p90'])} / {_fmt(re['max'])} °"),
        (
            "ATE RMSE raw / SE(3)-aligned",
            f"{_fmt(summary['ate']['rmse_m'])} / {_fmt(summary['ate']['aligned_rmse_m'])} m",
        ),
        (
            "NEES mean / median (6 = consistent)",
            f"{_fmt(summary['nees']['mean'], digits=1)} / {_fmt(summary['nees']['median'], digits=1)}",
        ),
        ("NEES within χ²₆ 95%", _fmt(100 * summary["nees"]["within_chi2_95"], "%", 1)),
    ]
    lat = summary["latency_ms"]
    rows.append(
        (
            "latency median / p90 / max",
            f"{_fmt(lat['median'], digits=0)} / {_fmt(lat['p90'], digits=0)} / {_fmt(lat['max'], digits=0)} ms",
        )
    )
    node = summary.get("node_latency_ms", {}).get("total")
    if node and node.get("count"):
        rows.append(
            (
                "node processing median / p90 (all frames)",
                f"{_fmt(node['median'], digits=0)} / {_fmt(node['p90'], digits=0)} ms",
            )
        )
    rows.append(("no pose (dropped / failed)", f"{summary['no_pose']} ({summary['dropped']} / {summary['failed']})"))
    reasons = summary.get("no_pose_reasons") or {}
    if reasons:
        top = max(reasons.items(), key=lambda kv: (kv[1], kv[0]))
        rows.append(("most common reason for no pose", f"{top[0]} ({top[1]} frames)"))
    raw = summary.get("before_gate")
    if raw:
        rec = raw["recall"]
        rows += [
            (
                "before the gate: poses found (refused)",
                f"{raw['poses']} ({raw['refused']} refused)",
            ),
            (
                "before the gate: recall @ 0.5 m, 5° / 5 m, 10°",
                f"{100 * rec['0.5m_5deg']:.1f}% / {100 * rec['5m_10deg']:.1f}%",
            ),
            (
                "before the gate: median error",
                f"{_fmt(raw['median_translation_m'])} m, {_fmt(raw['median_rotation_deg'], digits=2)}°",
            ),
        ]
        conf = raw.get("confidence")
        if conf:
            rows.append(
                (
                    "before the gate: confidence AUC; poses at ≥ 0.5, right among them / among the rest",
                    f"{_fmt(conf['auc'])}; {_fmt(100 * conf['kept'], '%', 1)}, "
                    f"{_fmt(100 * conf['right_of_kept'], '%', 1)} / {_fmt(100 * conf['right_of_rest'], '%', 1)}",
                )
            )
    return rows


def format_table(summary: dict[str, Any]) -> str:
    rows = table_rows(summary)
    w = max(len(k) for k, _ in rows)
    line = "-" * (w + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{w}}  {v}" for k, v in rows), line])


def _clean(obj: Any) -> Any:
    """JSON without NaN/Inf (they become null): strict parsers read it."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_summary_json(summary: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    tmp.replace(path)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _top_down_axes(P: np.ndarray) -> tuple[int, int]:
    """The two world axes with the largest spread (x, y for a z-up map; x, z for KITTI's camera-0 world)."""
    span = np.ptp(P, axis=0) if len(P) else np.ones(3)
    up = int(np.argmin(span)) if len(P) > 2 else 2
    a, b = [i for i in range(3) if i != up]
    return a, b


def plot_trajectory(run: Run, path: Path) -> None:
    plt = _plt()
    t_err, r_err = per_frame_errors(run)
    P_gt = run.T_gt[:, :3, 3]
    a, b = _top_down_axes(P_gt)
    names = "xyz"
    ok = run.localized
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    ax.plot(P_gt[:, a], P_gt[:, b], "-", color="0.35", lw=2, label="ground truth (camera)", zorder=1)
    ax.plot(P_gt[0, a], P_gt[0, b], "o", color="0.35", ms=7, zorder=1)
    ax.annotate("start", (P_gt[0, a], P_gt[0, b]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if ok.any():
        P = run.T_est[ok, :3, 3]
        good = (t_err[ok] <= 0.5) & (r_err[ok] <= 5.0)
        for g, e in zip(P_gt[ok], P, strict=True):
            ax.plot([g[a], e[a]], [g[b], e[b]], "-", color="tab:red", lw=0.6, alpha=0.5, zorder=2)
        ax.scatter(P[good, a], P[good, b], s=22, c="tab:green", label="estimate ≤ 0.5 m, 5°", zorder=3)
        ax.scatter(P[~good, a], P[~good, b], s=22, c="tab:red", marker="x", label="estimate, worse", zorder=3)
    if (~ok).any():
        ax.scatter(P_gt[~ok, a], P_gt[~ok, b], s=40, facecolors="none", edgecolors="k", label="no pose", zorder=3)
    refused = ~ok & np.isfinite(run.T_raw).all(axis=(1, 2)) if run.T_raw is not None else np.zeros(len(run), bool)
    if refused.any():  # what the localizer found where the gate published nothing
        P = run.T_raw[refused, :3, 3]
        for g, e in zip(P_gt[refused], P, strict=True):
            ax.plot([g[a], e[a]], [g[b], e[b]], "-", color="tab:orange", lw=0.5, alpha=0.4, zorder=2)
        ax.scatter(P[:, a], P[:, b], s=14, c="tab:orange", marker="+", label="refused by the gate", zorder=3)
    # keep the view on the drive even when a few estimates are far off
    lo, hi = P_gt[:, [a, b]].min(0), P_gt[:, [a, b]].max(0)
    pad = max(10.0, 0.15 * float(np.max(hi - lo)))
    half = float(np.max(hi - lo)) / 2 + pad  # a square view: a straight drive is not squeezed into a sliver
    mid = (lo + hi) / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    lo, hi, pad = mid - half + pad, mid + half - pad, pad
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"map {names[a]} (m)")
    ax.set_ylabel(f"map {names[b]} (m)")
    off = int(
        np.sum(ok) - np.sum(np.all(np.abs(run.T_est[ok, :3, 3][:, [a, b]] - (lo + hi) / 2) <= (hi - lo) / 2 + pad, 1))
    )
    title = f"Top-down trajectory: {int(ok.sum())}/{len(run)} frames localized"
    ax.set_title(title + (f" ({off} outside the view)" if off else ""))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_errors_over_time(run: Run, path: Path) -> None:
    plt = _plt()
    t_err, r_err = per_frame_errors(run)
    raw = _raw_errors(run)
    t = run.t_s
    ok = np.isfinite(t_err)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), dpi=110, sharex=True)
    for ax, err, unit, name, th in (
        (axes[0], t_err, "m", "translation error", [v[0] for v in RECALL_THRESHOLDS.values()]),
        (axes[1], r_err, "°", "rotation error", [v[1] for v in RECALL_THRESHOLDS.values()]),
    ):
        ax.plot(t[ok], err[ok], "o-", ms=3, lw=1, color="tab:blue", label="published")
        if raw is not None:  # the poses the gate refused, where it refused them
            refused = np.isfinite(raw[0]) & ~ok
            ax.plot(t[refused], (raw[0] if unit == "m" else raw[1])[refused], "+", ms=6, color="tab:orange")
            ax.plot([], [], "+", color="tab:orange", label="refused by the gate")
        for v in th:
            ax.axhline(v, color="0.5", ls="--", lw=0.8)
            ax.text(t[-1] if len(t) else 0, v, f" {v:g} {unit}", va="center", fontsize=7, color="0.4")
        if (~ok).any():
            ax.plot(
                t[~ok],
                np.full((~ok).sum(), 1.0),
                "|",
                color="tab:red",
                ms=14,
                mew=2,
                transform=ax.get_xaxis_transform(),
                label="no pose",
            )
            ax.legend(loc="upper left", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{name} ({unit})")
        ax.grid(alpha=0.3, which="both")
    axes[1].set_xlabel("time since first image (s)")
    axes[0].set_title("Pose error per frame (camera frame; log scale)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confidence(run: Run, path: Path) -> None:
    """Each localization's confidence over time, marked by whether its pose (before the gate) was within 0.5 m /
    5° of the truth: what a consumer of the diagnostics would have known."""
    plt = _plt()
    t_raw, r_raw = _raw_errors(run)  # (write_report draws it only for runs with poses before the gate)
    right = right_poses(t_raw, r_raw)
    have = np.isfinite(run.confidence) & np.isfinite(t_raw)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=110)
    for mask, color, label in ((have & right, "tab:green", "right"), (have & ~right, "tab:red", "wrong")):
        ax.plot(run.t_s[mask], run.confidence[mask], "o", ms=4, color=color, label=f"pose {label} (0.5 m / 5°)")
    ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time since first image (s)")
    ax.set_ylabel("confidence")
    ax.set_title("Each localization's confidence (P within 0.5 m / 5°), before the gate and fusion")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _raw_errors(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """Errors of the poses found before the gate (``Run.T_raw``), or None when the run has none."""
    if run.T_raw is None or not np.isfinite(run.T_raw).all(axis=(1, 2)).any():
        return None
    return pose_errors(run.T_raw, run.T_gt)


def plot_error_cdf(run: Run, path: Path) -> None:
    plt = _plt()
    t_err, r_err = per_frame_errors(run)
    raw = _raw_errors(run)
    n = max(len(t_err), 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    for i, (ax, err, unit, name, th) in enumerate(
        (
            (axes[0], t_err, "m", "translation error", [v[0] for v in RECALL_THRESHOLDS.values()]),
            (axes[1], r_err, "°", "rotation error", [v[1] for v in RECALL_THRESHOLDS.values()]),
        )
    ):
        curves = [(err, "tab:blue", "-", "published")]
        if raw is not None:
            curves.append((raw[i], "tab:orange", "--", "before the gate"))
        for values, color, ls, label in curves:
            e = np.sort(values[np.isfinite(values)])
            if len(e):
                x = np.concatenate([[min(e[0], 1e-3)], e])
                y = np.concatenate([[0.0], np.arange(1, len(e) + 1) / n])  # share of all frames: failures never count
                ax.step(x, 100 * y, where="post", color=color, ls=ls, label=label)
        if raw is not None:
            ax.legend(loc="upper left", fontsize=8)
        for v in th:
            ax.axvline(v, color="0.5", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"{name} ({unit})")
        ax.set_ylabel("frames within (%)")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Error CDF over all played frames (frames without a pose never count)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(run: Run, path: Path) -> None:
    plt = _plt()
    lat = run.latency_ms[np.isfinite(run.latency_ms)]
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    if len(lat):
        ax.hist(lat, bins=min(30, max(5, len(lat) // 2)), color="tab:blue", alpha=0.8, label="end to end")
        for q, ls in ((50, "-"), (90, "--")):
            v = float(np.percentile(lat, q))
            ax.axvline(v, color="k", ls=ls, lw=1, label=f"p{q} {v:.0f} ms")
    node = run.stage_latency_ms.get("total") or []
    if len(node):
        ax.hist(node, bins=min(30, max(5, len(node) // 2)), color="tab:orange", alpha=0.5, label="node: processing")
    ax.set_xlabel("latency (ms): image published → pose received")
    ax.set_ylabel("frames")
    ax.set_title(f"Latency ({len(lat)} poses; {run.dropped} dropped, {len(run) - int(run.localized.sum())} no pose)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_matches(rgb: np.ndarray, result: Any, path: str | Path, title: str = "") -> None:
    """One image with its 2D-3D matches: inliers green, outliers red (LocalizationResult-like ``result``)."""
    plt = _plt()
    px = np.asarray(result.matched_pixels, dtype=np.float64).reshape(-1, 2)
    inl = np.asarray(result.inlier_mask, dtype=bool).reshape(-1)
    if len(inl) != len(px):
        inl = np.zeros(len(px), bool)
    h, w = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(w / 100, h / 100 + 0.5), dpi=100)
    ax.imshow(rgb)
    style = dict(edgecolors="k", linewidths=0.3)
    ax.scatter(px[~inl, 0], px[~inl, 1], s=10, c="red", alpha=0.8, label=f"outliers {int((~inl).sum())}", **style)
    ax.scatter(px[inl, 0], px[inl, 1], s=12, c="lime", alpha=0.9, label=f"inliers {int(inl.sum())}", **style)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title or f"{result.status.value}: {len(px)} matches, {int(inl.sum())} inliers", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _reason_lines(reasons: dict[str, int]) -> list[str]:
    """The "why no pose" table: a report whose frames all failed must say what refused them."""
    if not reasons:
        return []
    rows = [f"| {k} | {v} |" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ["### Frames without a pose, by reason", "", "| reason | frames |", "| --- | --- |", *rows, ""]


def write_report(run: Run, summary: dict[str, Any], out_dir: str | Path, match_frame: Any = None) -> Path:
    """Write the report folder; returns the path of ``report.md``.

    ``match_frame``: ``(rgb, LocalizationResult[, caption])`` for the match image (skipped when None).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_trajectory(run, out / PLOTS["trajectory"])
    plot_errors_over_time(run, out / PLOTS["errors"])
    plot_error_cdf(run, out / PLOTS["cdf"])
    plot_latency(run, out / PLOTS["latency"])
    images = ["trajectory", "errors", "cdf", "latency"]
    caption = ""
    if match_frame is not None:
        rgb, res, *rest = match_frame
        caption = rest[0] if rest else ""
        plot_matches(rgb, res, out / PLOTS["matches"], title=caption)
        images.append("matches")
    else:
        (out / PLOTS["matches"]).unlink(missing_ok=True)  # not a stale one from an earlier run
    if (summary.get("before_gate") or {}).get("confidence"):
        plot_confidence(run, out / PLOTS["confidence"])
        images.append("confidence")
    else:
        (out / PLOTS["confidence"]).unlink(missing_ok=True)
    tum = run.write_tum(out)
    write_summary_json(summary, out / "summary.json")

    meta = run.meta
    lines = ["# EP2P-Loc localization report", ""]
    if meta:
        src = [f"- {k}: `{meta[k]}`" for k in ("input_bag", "map", "model", "rate", "use_sim_time") if k in meta]
        lines += ["## Run", "", *src, ""]
    lines += [
        "## Summary",
        "",
        "Errors are of the camera pose (optical frame) in the map frame; frames without a pose count as misses.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in table_rows(summary)),
        "",
        "ATE: evo APE (translation part) over localized frames, raw and after an SE(3) Umeyama alignment. "
        "NEES: eᵀΣ⁻¹e of each pose with its published covariance; a consistent estimator averages 6."
        + (
            " Before the gate: every pose the localizer found (the node's ~/raw_pose), published or refused by the"
            " quality gate; the trajectory plot marks the refused ones."
            if summary.get("before_gate")
            else ""
        ),
        "",
        *_reason_lines(summary.get("no_pose_reasons") or {}),
        "## Plots",
        "",
    ]
    titles = {
        "trajectory": "Top-down trajectory against ground truth",
        "errors": "Error over time",
        "cdf": "Error CDF",
        "latency": "Latency",
        "matches": f"Matches on one frame{': ' + caption if caption else ''}",
        "confidence": "Confidence of each localization",
    }
    for k in images:
        lines += [f"### {titles[k]}", "", f"![{titles[k]}]({PLOTS[k]})", ""]
    lines += [
        "## Files",
        "",
        "- `summary.json`: every number above (machine readable)",
        f"- `{Path(tum['estimate']).name}`, `{Path(tum['ground_truth']).name}`: TUM trajectories of "
        f"`{'base_link' if run.T_base_cam is not None else 'camera'}` (`evo_ape tum ground_truth.tum estimate.tum -a`)",
        "",
    ]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md
