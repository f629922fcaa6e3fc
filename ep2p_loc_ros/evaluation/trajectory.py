"""Scoring a localization run against ground truth: per-frame poses -> metrics (evo for ATE and alignment).

A run is what a replay recorded (``replay_result.json`` + the result bag, see ``ros/replay.py``) or what the
in-process :class:`~ep2p_loc_ros.localizer.Localizer` produced on the same bag. Both become a :class:`Run`: one
row per played image (stamp, estimate or NaN, covariance, latency), compared in the **camera** frame, the frame
``evaluate_sequence`` scores, so replay and in-process numbers are directly comparable. The node publishes the
pose of ``base_link`` when the bag's ``/tf_static`` gives the camera mount; it is mapped back to the camera here,
its covariance with it (first order, the ROS convention of ``pnp.py``).

Trajectory files are TUM (``timestamp x y z qx qy qz qw``, what ``evo_ape tum gt.tum est.tum`` reads).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..geometry import invert, lever_jacobian, matrix_to_quaternion, quaternion_to_matrix
from ..pose_confidence import confidence_summary, right_poses
from .metrics import CHI2_6_95, RECALL_THRESHOLDS, nees, pose_errors, recall_table, summarize_errors

__all__ = [
    "RESULT_FILE",
    "Run",
    "covariance_base_to_camera",
    "evaluate_result",
    "evaluate_run",
    "load_result",
    "read_tum",
    "run_in_process",
    "write_result",
    "write_tum",
]

RESULT_FILE = "replay_result.json"
RESULT_FORMAT = "ep2p-loc-replay-result"
RESULT_VERSION = 1
STAMP_TOL_NS = 1_000_000  # estimate <-> ground truth association tolerance


def covariance_base_to_camera(cov_base: np.ndarray, T_map_base: np.ndarray, T_map_cam: np.ndarray) -> np.ndarray:
    """6x6 ROS-order covariance of ``T_map_base`` -> that of ``T_map_cam`` (same rigid body).

    Both poses are perturbed as ``t + δt``, ``exp(δr) R`` (parent-frame axes, pnp.py). With ``d = t_cam − t_base``
    the camera's ``δt_cam = δt_base − [d]× δr`` and ``δr_cam = δr_base``: ``Σ_cam = J Σ_base Jᵀ``.
    """
    J = lever_jacobian(np.asarray(T_map_cam)[:3, 3] - np.asarray(T_map_base)[:3, 3])
    return J @ np.asarray(cov_base, dtype=np.float64) @ J.T


def write_tum(path: str | Path, stamps_ns: np.ndarray, T: np.ndarray) -> int:
    """Write the finite poses of (N, 4, 4) ``T`` as a TUM file; returns the number of lines written."""
    path = Path(path)
    lines = []
    for t_ns, Ti in zip(np.asarray(stamps_ns), np.asarray(T), strict=True):
        if not np.isfinite(Ti).all():
            continue
        q = matrix_to_quaternion(Ti[:3, :3])
        x, y, z = Ti[:3, 3]
        lines.append(f"{int(t_ns) / 1e9:.9f} {x:.9f} {y:.9f} {z:.9f} {q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def read_tum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """TUM file -> (stamps_ns (N,), T (N, 4, 4))."""
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments="#")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read TUM trajectory ({exc})") from exc
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4, 4))
    if rows.shape[1] != 8:
        raise DataError(f"{path}: TUM lines need 8 numbers (t x y z qx qy qz qw), got {rows.shape[1]}")
    T = np.tile(np.eye(4), (len(rows), 1, 1))
    for i, r in enumerate(rows):
        T[i, :3, :3] = quaternion_to_matrix(r[4:8])
        T[i, :3, 3] = r[1:4]
    return np.round(rows[:, 0] * 1e9).astype(np.int64), T


@dataclass
class Run:
    """One localization run over a bag's images, aligned with its ground truth (camera frame)."""

    stamps_ns: np.ndarray  # (N,) image stamps, in play order
    T_gt: np.ndarray  # (N, 4, 4) T_map_cam ground truth
    T_est: np.ndarray  # (N, 4, 4) T_map_cam estimate; NaN where no pose came
    covariances: np.ndarray  # (N, 6, 6) camera-frame covariance; NaN where no pose came
    latency_ms: np.ndarray  # (N,) end to end (image sent -> pose received); NaN where no pose came
    T_base_cam: np.ndarray | None = None  # mount, to write base_link trajectories (what the node publishes)
    dropped: int = 0  # images the node reported dropped (no processing at all)
    failed: int = 0  # images processed without a pose (the node's count, when it reports one)
    stage_latency_ms: dict[str, list[float]] = field(default_factory=dict)  # node-reported, from /diagnostics
    meta: dict[str, Any] = field(default_factory=dict)
    no_pose_reasons: dict[str, int] = field(default_factory=dict)  # why frames got no pose: reason -> frames
    # (N, 4, 4) T_map_cam of every pose the localizer found, before the node's quality gate (NaN: none found);
    # None when the run did not record them (older results, in-process runs)
    T_raw: np.ndarray | None = None
    # (N,) each frame's localization confidence (P within 0.5 m / 5 deg, the node's diagnostics; NaN: none); None when
    # the run did not record it
    confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def t_s(self) -> np.ndarray:
        return (self.stamps_ns - self.stamps_ns[0]) / 1e9 if len(self) else np.zeros(0)

    @property
    def localized(self) -> np.ndarray:
        return np.isfinite(self.T_est).all(axis=(1, 2))

    def base_poses(self, T_cam: np.ndarray) -> np.ndarray:
        """Camera poses -> base_link poses (unchanged when the mount is unknown)."""
        if self.T_base_cam is None:
            return T_cam
        return T_cam @ invert(self.T_base_cam)

    def write_tum(self, out_dir: str | Path) -> dict[str, str]:
        """``estimate.tum`` and ``ground_truth.tum`` (base_link when the mount is known, else camera)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_tum(out_dir / "estimate.tum", self.stamps_ns, self.base_poses(self.T_est))
        write_tum(out_dir / "ground_truth.tum", self.stamps_ns, self.base_poses(self.T_gt))
        return {"estimate": str(out_dir / "estimate.tum"), "ground_truth": str(out_dir / "ground_truth.tum")}


def write_result(out_dir: str | Path, frames: list[dict[str, Any]], **meta: Any) -> Path:
    """Write ``replay_result.json``: one entry per played image (``stamp_ns``, ``pose`` 4x4 of ``pose_frame`` or
    None, ``covariance`` 6x6, ``latency_ms``, ...) plus run metadata (``input_bag``, ``pose_frame``, ``dropped``,
    ``failed``, ``node_latency_ms`` {stage: [ms, ...]}, ...). Atomic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def arr(v: Any) -> Any:
        return None if v is None else np.asarray(v, dtype=np.float64).tolist()

    rows = [
        f | {"pose": arr(f.get("pose")), "covariance": arr(f.get("covariance")), "raw_pose": arr(f.get("raw_pose"))}
        for f in frames
    ]
    doc = {"format": RESULT_FORMAT, "format_version": RESULT_VERSION, **meta, "frames": rows}
    path = out_dir / RESULT_FILE
    tmp = path.with_name(path.name + ".tmp")
    from .report import _clean

    tmp.write_text(json.dumps(_clean(doc), indent=1) + "\n")
    tmp.replace(path)
    return path


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"count": 0, "mean": float("nan"), "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {
        "count": len(x),
        "mean": float(np.mean(x)),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "max": float(np.max(x)),
    }


def ate(T_est: np.ndarray, T_gt: np.ndarray, stamps_ns: np.ndarray) -> dict[str, Any]:
    """Absolute trajectory error of the localized frames with evo: raw (map frame) and after SE(3) alignment."""
    from evo.core import metrics
    from evo.core.trajectory import PoseTrajectory3D

    ok = np.isfinite(T_est).all(axis=(1, 2))
    out: dict[str, Any] = {"poses": int(ok.sum())}
    if ok.sum() < 1:
        return out | {"rmse_m": float("nan"), "aligned_rmse_m": float("nan")}
    t = np.asarray(stamps_ns)[ok] / 1e9
    ref = PoseTrajectory3D(poses_se3=list(T_gt[ok]), timestamps=t)
    est = PoseTrajectory3D(poses_se3=list(T_est[ok]), timestamps=t)

    def ape(e: PoseTrajectory3D) -> dict[str, float]:
        m = metrics.APE(metrics.PoseRelation.translation_part)
        m.process_data((ref, e))
        return {k: float(v) for k, v in m.get_all_statistics().items()}

    raw = ape(est)
    out |= {"rmse_m": raw["rmse"], "raw": raw}
    if ok.sum() >= 3:  # Umeyama needs a non-degenerate set of positions
        aligned = copy.deepcopy(est)
        try:
            r, tr, _ = aligned.align(ref, correct_scale=False)
            stats = ape(aligned)
            out |= {
                "aligned_rmse_m": stats["rmse"],
                "aligned": stats,
                "alignment": {"rotation_deg": float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))}
                | {"translation_m": float(np.linalg.norm(tr))},
            }
        except Exception as exc:  # evo raises its own GeometryException on degenerate sets
            out |= {"aligned_rmse_m": float("nan"), "alignment_error": str(exc)}
    else:
        out["aligned_rmse_m"] = float("nan")
    return out


def evaluate_run(run: Run) -> dict[str, Any]:
    """All metrics of a run, JSON-ready (NaN where undefined)."""
    t_err, r_err = pose_errors(run.T_est, run.T_gt)
    n = nees(run.T_est, run.T_gt, run.covariances)
    finite = n[np.isfinite(n)]
    ok = run.localized
    out: dict[str, Any] = {
        "frames": len(run),
        "localized_frames": int(ok.sum()),
        "recall": recall_table(t_err, r_err),
        "recall_thresholds": {k: {"m": v[0], "deg": v[1]} for k, v in RECALL_THRESHOLDS.items()},
        **summarize_errors(t_err, r_err),
        "translation_error_m": _stats(np.where(ok, t_err, np.nan)),
        "rotation_error_deg": _stats(np.where(ok, r_err, np.nan)),
        "ate": ate(run.T_est, run.T_gt, run.stamps_ns),
        "nees": {
            "frames": len(finite),
            "mean": float(np.mean(finite)) if len(finite) else float("nan"),
            "median": float(np.median(finite)) if len(finite) else float("nan"),
            "within_chi2_95": float(np.mean(finite <= CHI2_6_95)) if len(finite) else float("nan"),
            "expected_mean": 6.0,
        },
        "latency_ms": _stats(run.latency_ms) | {"p99": _pct(run.latency_ms, 99)},
        "dropped": int(run.dropped),
        "no_pose": int(len(run) - ok.sum()),
        "failed": int(run.failed),
        "node_latency_ms": {k: _stats(np.asarray(v)) for k, v in sorted(run.stage_latency_ms.items())},
        "no_pose_reasons": dict(sorted(run.no_pose_reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if run.T_raw is not None:
        # What the localizer found before the gate: what a looser gate would publish, and what the gate refused.
        t_raw, r_raw = pose_errors(run.T_raw, run.T_gt)
        found = np.isfinite(run.T_raw).all(axis=(1, 2))
        out["before_gate"] = {
            "poses": int(found.sum()),
            "recall": recall_table(t_raw, r_raw),
            **summarize_errors(t_raw, r_raw),
            "refused": int((found & ~ok).sum()),
        }
        if run.confidence is not None and np.isfinite(run.confidence[found]).any():
            # how well each localization's confidence told its right poses from its wrong ones
            conf = np.where(found, run.confidence, np.nan)
            out["before_gate"]["confidence"] = confidence_summary(conf, right_poses(t_raw, r_raw))
    return out


def _reason_family(reason: str | None) -> str:
    """A no-pose reason without its per-frame numbers, so frames refused for the same cause count together
    ("inlier ratio too low: 0.13 < gate.min_inlier_ratio 0.25" -> "inlier ratio too low")."""
    text = (reason or "").strip()
    return text.split(":", 1)[0].strip() or "unknown"


def _count_reasons(reasons: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons:
        family = _reason_family(r)
        counts[family] = counts.get(family, 0) + 1
    return counts


def _pct(x: np.ndarray, q: float) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else float("nan")


def per_frame_errors(run: Run) -> tuple[np.ndarray, np.ndarray]:
    return pose_errors(run.T_est, run.T_gt)


# -- loading ---------------------------------------------------------------------------------------------------


def _ground_truth_from_bag(bag: str | Path) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """stamp -> ``T_map_cam`` ground truth, and the mount ``T_base_cam`` (None: GT is of the camera)."""
    from ..ros.bags import load_bag_summary

    s = load_bag_summary(bag)
    if not s.gt_stamps_ns:
        raise DataError(f"{bag}: no /ground_truth/pose messages")
    mount = s.T_base_cam
    T_cam = s.T_map_base_gt if mount is None else s.T_map_base_gt @ mount
    return dict(zip(s.gt_stamps_ns, T_cam, strict=True)), mount


def _ground_truth(ground_truth: str | Path | None, fallback: str | None) -> tuple[dict[int, np.ndarray], Any]:
    src = ground_truth if ground_truth is not None else fallback
    if src is None:
        raise DataError("no ground truth given and the result names no input bag")
    src = Path(src)
    if src.is_dir():
        return _ground_truth_from_bag(src)
    stamps, T = read_tum(src)  # a TUM file of camera poses
    return dict(zip(stamps.tolist(), T, strict=True)), None


def _lookup(gt: dict[int, np.ndarray], stamp: int) -> np.ndarray | None:
    if stamp in gt:
        return gt[stamp]
    keys = np.fromiter(gt.keys(), dtype=np.int64)
    j = int(np.argmin(np.abs(keys - stamp)))
    return gt[int(keys[j])] if abs(int(keys[j]) - stamp) <= STAMP_TOL_NS else None


def load_result(result: str | Path, ground_truth: str | Path | None = None) -> Run:
    """A replay result directory (``replay_result.json``) or result bag -> :class:`Run` against ground truth.

    ``ground_truth``: the input bag (``/ground_truth/pose`` + ``/tf_static``) or a TUM file of camera poses;
    by default the input bag the result names.
    """
    result = Path(result)
    meta_path = result / RESULT_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise DataError(f"{meta_path}: not valid JSON ({exc})") from exc
        if meta.get("format") != RESULT_FORMAT:
            raise DataError(f"{meta_path}: not a replay result (format {meta.get('format')!r})")
        frames = meta["frames"]
        input_bag = meta.get("input_bag")
    elif (result / "metadata.yaml").is_file():
        from ..ros.replay import frames_from_result_bag

        frames, meta = frames_from_result_bag(result)
        input_bag = meta.get("input_bag")
    else:
        raise DataError(f"{result}: neither a replay result directory ({RESULT_FILE}) nor a bag")
    gt, mount = _ground_truth(ground_truth, input_bag)
    pose_frame = meta.get("pose_frame", "base_link")
    n = len(frames)
    stamps = np.array([int(f["stamp_ns"]) for f in frames], dtype=np.int64)
    T_gt = np.full((n, 4, 4), np.nan)
    T_est = np.full((n, 4, 4), np.nan)
    cov = np.full((n, 6, 6), np.nan)
    lat = np.full(n, np.nan)
    T_raw = np.full((n, 4, 4), np.nan) if any("raw_pose" in f for f in frames) else None
    confidence = None
    if any(f.get("confidence") is not None for f in frames):
        confidence = np.array([np.nan if f.get("confidence") is None else float(f["confidence"]) for f in frames])
    reasons: list[str | None] = []
    for k, f in enumerate(frames):
        g = _lookup(gt, int(f["stamp_ns"]))
        if g is None:
            raise DataError(f"{result}: no ground truth for image stamp {f['stamp_ns']}")
        T_gt[k] = g
        of = f.get("pose_of") or pose_frame  # per frame: the node knows the mount only once /tf_static came
        to_cam = mount if of == "base_link" and mount is not None else np.eye(4)
        if T_raw is not None and f.get("raw_pose") is not None:
            T_raw[k] = np.asarray(f["raw_pose"], dtype=np.float64).reshape(4, 4) @ to_cam
        if f.get("pose") is None:
            reasons.append(f.get("reason") or f.get("result"))
            continue
        T = np.asarray(f["pose"], dtype=np.float64).reshape(4, 4)
        C = np.asarray(f["covariance"], dtype=np.float64).reshape(6, 6)
        if of == "base_link" and mount is not None:
            T_cam = T @ mount
            C = covariance_base_to_camera(C, T, T_cam)
            T = T_cam
        T_est[k], cov[k] = T, C
        if f.get("latency_ms") is not None:
            lat[k] = float(f["latency_ms"])
    return Run(
        stamps,
        T_gt,
        T_est,
        cov,
        lat,
        T_base_cam=mount,
        dropped=int(meta.get("dropped", 0)),
        failed=int(meta.get("failed", 0)),
        stage_latency_ms={k: list(v) for k, v in meta.get("node_latency_ms", {}).items()},
        meta={k: v for k, v in meta.items() if k != "frames"},
        no_pose_reasons=_count_reasons(reasons),
        T_raw=T_raw,
        confidence=confidence,
    )


def evaluate_result(
    result: str | Path,
    ground_truth: str | Path | None = None,
    out_dir: str | Path | None = None,
    match_frame: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of a replay result (dir or result bag) against ground truth; with ``out_dir``, also the report.

    This is what ``ep2p-loc evaluate --result R [--ground-truth BAG] [--report DIR] [--json]`` calls.
    ``match_frame``: optional ``(rgb, LocalizationResult)`` drawn as the report's match image.
    """
    run = load_result(result, ground_truth)
    summary = evaluate_run(run)
    summary["source"] = {"result": str(result), "ground_truth": str(ground_truth or run.meta.get("input_bag"))}
    if out_dir is not None:
        from .report import write_report

        summary["report"] = str(write_report(run, summary, out_dir, match_frame=match_frame))
    return summary


def run_in_process(
    localizer: Any,
    bag: str | Path,
    prior_fn: Any = None,
    progress: bool = False,
) -> tuple[Run, list[Any]]:
    """Localize every image of ``bag`` with an in-process :class:`Localizer` (the reference for a replay).

    Images and intrinsics are decoded from the bag exactly as the node decodes them. ``prior_fn(k, previous
    results) -> T_map_cam | None`` supplies a prior (tracking); by default none (global localization).
    Returns the run (latency = the localizer's own ``total``) and the per-frame results.
    """
    from tqdm import tqdm

    from ..ros.bags import bag_frames

    gt, mount = _ground_truth_from_bag(bag)
    stamps, T_gt, T_est, cov, lat, results = [], [], [], [], [], []
    frames = bag_frames(bag)
    for k, fr in enumerate(tqdm(frames, desc="in-process", unit="img", disable=not progress)):
        prior = prior_fn(k, results) if prior_fn is not None else None
        res = localizer.localize(fr.rgb, fr.camera, prior, source=f"{bag}@{fr.stamp_ns}")
        g = _lookup(gt, fr.stamp_ns)
        if g is None:
            raise DataError(f"{bag}: no ground truth for image stamp {fr.stamp_ns}")
        results.append(res)
        stamps.append(fr.stamp_ns)
        T_gt.append(g)
        T_est.append(res.T_map_cam)
        cov.append(res.covariance)
        lat.append(res.timings_ms.get("total", np.nan) if res.ok else np.nan)
    stage: dict[str, list[float]] = {}
    for r in results:
        for k2, v in r.timings_ms.items():
            stage.setdefault(k2, []).append(float(v))
    run = Run(
        np.asarray(stamps, dtype=np.int64),
        np.stack(T_gt),
        np.stack(T_est),
        np.stack(cov),
        np.asarray(lat, dtype=np.float64),
        T_base_cam=mount,
        failed=sum(not r.ok for r in results),
        stage_latency_ms=stage,
        meta={"input_bag": str(bag), "mode": "in-process"},
        no_pose_reasons=_count_reasons([f"{r.status.value}: {r.message}" for r in results if not r.ok]),
    )
    return run, results
