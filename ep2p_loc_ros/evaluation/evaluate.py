"""Localize every image of a KITTI-layout sequence in a map and score it against the sequence's poses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.kitti_odometry import KittiOdometrySequence
from ..geometry import pose_add
from ..localizer import LocalizationResult, Localizer
from ..map import nearest_submaps
from ..pose_confidence import confidence_summary, right_poses
from .metrics import CHI2_6_95, nees, pose_errors, recall_table, summarize_errors

__all__ = ["SequenceEvaluation", "evaluate_sequence"]


@dataclass
class SequenceEvaluation:
    """Per-frame results and the summary ``ep2p-loc evaluate --json`` prints."""

    frames: list[int]
    T_gt: np.ndarray  # (N, 4, 4) T_map_cam
    T_est: np.ndarray  # (N, 4, 4), NaN where not localized
    covariances: np.ndarray  # (N, 6, 6)
    results: list[LocalizationResult] = field(repr=False)
    retrieval_hits: dict[int, list[bool]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        t_err, r_err = pose_errors(self.T_est, self.T_gt)
        ok = [r for r in self.results if r.num_matches]
        stages = sorted({k for r in self.results for k in r.timings_ms})
        latency = {s: float(np.median([r.timings_ms[s] for r in self.results if s in r.timings_ms])) for s in stages}
        n = nees(self.T_est, self.T_gt, self.covariances)
        statuses: dict[str, int] = {}
        for r in self.results:
            statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
        return {
            "frames": len(self.frames),
            "recall": recall_table(t_err, r_err),
            **summarize_errors(t_err, r_err),
            "inlier_ratio": float(np.mean([r.inlier_ratio for r in ok])) if ok else 0.0,
            "mean_matches": float(np.mean([r.num_matches for r in self.results])) if self.results else 0.0,
            "retrieval_recall": {str(k): float(np.mean(v)) for k, v in self.retrieval_hits.items() if v},
            "latency_ms": latency,
            "nees_median": float(np.nanmedian(n)) if np.isfinite(n).any() else float("nan"),
            # share of the localized frames whose NEES is within chi-square(6)'s 95th percentile (consistent: 0.95)
            "nees_within_95": float(np.mean(n[np.isfinite(n)] <= CHI2_6_95)) if np.isfinite(n).any() else float("nan"),
            "status_counts": statuses,
            **self._confidence(t_err, r_err),
        }

    def _confidence(self, t_err: np.ndarray, r_err: np.ndarray) -> dict[str, Any]:
        """How well the results' confidence told right poses from wrong ones (``{}`` when none has one)."""
        conf = np.array([r.confidence if r.ok else np.nan for r in self.results])
        if not np.isfinite(conf).any():
            return {}
        return {"confidence": confidence_summary(conf, right_poses(t_err, r_err))}


def _perturb(T: np.ndarray, metres: float, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """``T`` moved by ``metres`` in a random direction and turned by ``degrees`` about a random axis."""
    if metres == 0 and degrees == 0:
        return T
    d, axis = rng.normal(size=3), rng.normal(size=3)
    return pose_add(T, np.r_[metres * d / np.linalg.norm(d), np.radians(degrees) * axis / np.linalg.norm(axis)])


def evaluate_sequence(
    localizer: Localizer,
    sequence: str | Path | KittiOdometrySequence,
    stride: int = 1,
    max_frames: int | None = None,
    use_prior: bool = False,
    progress: bool = True,
    retrieval_ks: tuple[int, ...] = (1, 5),
    prior_noise: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
) -> SequenceEvaluation:
    """Localize frames ``0, stride, 2·stride, …`` (global localization; ``use_prior`` = tracking from GT).

    ``prior_noise`` (metres, degrees) moves and turns each tracking prior by that much in a random direction and
    about a random axis, so tracking is scored from a prior as wrong as a drifting odometry would give.

    Retrieval recall@k: the submap whose viewpoint is nearest the true camera is among the top-k retrieved.
    """
    from tqdm import tqdm

    from ..map import top_k_by_descriptor

    seq = sequence if isinstance(sequence, KittiOdometrySequence) else KittiOdometrySequence(Path(sequence))
    frames = list(range(0, len(seq), stride))[:max_frames]
    camera = seq.calib.camera
    T_gt, T_est, covs, results = [], [], [], []
    hits: dict[int, list[bool]] = {k: [] for k in retrieval_ks}
    rng = np.random.default_rng(seed)
    for i in tqdm(frames, desc="localize", unit="img", disable=not progress):
        T = seq.T_world_cam(i)
        prior = _perturb(T, *prior_noise, rng) if use_prior else None
        res = localizer.localize(seq.image(i), camera, prior, source=str(seq.image_paths[i]))
        results.append(res)
        T_gt.append(T)
        T_est.append(res.T_map_cam)
        covs.append(res.covariance)
        if localizer.map.descriptor_dim and res.timings_ms:
            true_id = int(nearest_submaps(localizer.map, T, 1)[0][0])
            desc = localizer.last_descriptor
            if desc is not None:
                ranked, _ = top_k_by_descriptor(localizer.map, desc, max(retrieval_ks))
                for k in retrieval_ks:
                    hits[k].append(true_id in ranked[:k].tolist())
    return SequenceEvaluation(frames, np.stack(T_gt), np.stack(T_est), np.stack(covs), results, hits)
