"""``ep2p-loc localize`` (one image) and ``ep2p-loc evaluate`` (every image of a sequence) — in process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..demo_data import DEFAULT_MODEL_DIR
from ..map.store import ENVIRONMENTS

__all__ = ["register"]


def _localizer_config(args: argparse.Namespace) -> Any:
    import yaml

    from ..localizer import LocalizerConfig

    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{args.config}: cannot read localizer config ({exc})") from exc
    cfg = LocalizerConfig.from_dict(data, str(args.config or "config"))
    names = ("top_k", "use_ipr", "refine_pixels", "calibrated_covariance")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if overrides:
        cfg = LocalizerConfig.from_dict({**cfg.to_dict(), **overrides})
    return cfg


def _read_camera(calib: Path, size: tuple[int, int]) -> Any:
    """Intrinsics of the left colour camera from a KITTI odometry ``calib.txt`` or object ``calib/*.txt``."""
    from ..calib import read_kitti_object_calib, read_kitti_odometry_calib
    from ..errors import DataError

    try:
        return read_kitti_odometry_calib(calib, size).camera
    except DataError as first:
        try:
            return read_kitti_object_calib(calib, size).camera
        except DataError:
            raise first from None


def _result_json(res: Any) -> dict[str, Any]:
    from ..geometry import matrix_to_quaternion

    out: dict[str, Any] = {
        "status": res.status.value,
        "message": res.message,
        "num_matches": res.num_matches,
        "num_inliers": res.num_inliers,
        "inlier_ratio": res.inlier_ratio,
        "submap_id": res.submap_id,
        "retrieved": list(res.retrieved),
        "timings_ms": {k: round(v, 3) for k, v in res.timings_ms.items()},
    }
    if res.ok:
        out["T_map_cam"] = res.T_map_cam.tolist()
        out["position"] = res.T_map_cam[:3, 3].tolist()
        out["orientation_xyzw"] = matrix_to_quaternion(res.T_map_cam[:3, :3]).tolist()
        out["covariance"] = res.covariance.tolist()
        if res.aligned:
            out["alignment_score"] = res.alignment_score
            out["support"] = res.support
            # probability that the pose is within 0.5 m / 5 deg (null: no MODEL/confidence.json fit for this map)
            out["confidence"] = None if np.isnan(res.confidence) else res.confidence
    return out


def _cmd_localize(args: argparse.Namespace) -> int:
    from ..datasets.kitti_object import load_image_rgb
    from ..localizer import Localizer

    cfg = _localizer_config(args)
    loc = Localizer.from_paths(args.map, args.model, cfg, providers=args.providers)
    rgb = load_image_rgb(args.image)
    camera = _read_camera(args.calib, (rgb.shape[1], rgb.shape[0]))
    prior = None
    if args.prior is not None:
        prior = np.array(json.loads(args.prior), dtype=np.float64)
    res = loc.localize(rgb, camera, prior, source=str(args.image))
    if args.json:
        print(json.dumps(_result_json(res), indent=2))
    else:
        print(f"status: {res.status.value} ({res.message})")
        print(f"matches {res.num_matches}, inliers {res.num_inliers}, submap {res.submap_id}")
        if res.ok:
            np.set_printoptions(precision=4, suppress=True)
            print(f"T_map_cam:\n{res.T_map_cam}")
            print(f"position std (m): {np.sqrt(np.diag(res.covariance)[:3])}")
            if np.isfinite(res.confidence):
                print(f"confidence (P within 0.5 m / 5°): {res.confidence:.2f}")
        print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings_ms.items()))
    return 0 if res.ok else 1


def _print_summary(summary: dict[str, Any]) -> None:
    rec = summary["recall"]
    print("| frames | localized | R@0.25m,2° | R@0.5m,5° | R@5m,10° | median t (m) | median R (°) | inlier ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {summary['frames']} | {summary['localized']:.1%} | {rec['0.25m_2deg']:.1%} | {rec['0.5m_5deg']:.1%} | "
        f"{rec['5m_10deg']:.1%} | {summary['median_translation_m']:.3f} | {summary['median_rotation_deg']:.2f} | "
        f"{summary['inlier_ratio']:.2f} |"
    )
    rr = summary.get("retrieval_recall", {})
    if rr:
        print("retrieval recall: " + ", ".join(f"@{k} {v:.1%}" for k, v in rr.items()))
    lat = summary.get("latency_ms", {})
    if lat:
        print("latency p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in lat.items()))
    conf = summary.get("confidence")
    if conf:
        print(
            f"confidence: AUC {conf['auc']:.3f}, Brier {conf['brier']:.3f}; {conf['kept']:.1%} of the poses at "
            f">= {conf['threshold']}, {conf['right_of_kept']:.1%} of them right ({conf['right_of_rest']:.1%} below)"
        )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..localizer import Localizer
    from .evaluate import evaluate_sequence

    if args.result is not None:
        return _evaluate_result(args)
    if args.sequence is None or args.map is None:
        msg = "give --map and --sequence (in process) or --result (a replay)"
        print(f"ep2p-loc evaluate: error: {msg}", file=sys.stderr)
        return 2
    cfg = _localizer_config(args)
    loc = Localizer.from_paths(args.map, args.model, cfg, providers=args.providers)
    ev = evaluate_sequence(
        loc,
        args.sequence,
        stride=args.stride,
        max_frames=args.max_frames,
        use_prior=args.use_prior or args.prior_noise is not None,
        prior_noise=tuple(args.prior_noise or (0.0, 0.0)),
        progress=not args.json,
    )
    summary = ev.summary()
    summary["config"] = {"map": str(args.map), "model": str(args.model), "sequence": str(args.sequence)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ..covariance_calibration import CALIBRATION_FILE, CovarianceCalibration
    from .calibrate import calibrate_covariance, format_calibration

    out = args.out if args.out is not None else args.model / CALIBRATION_FILE
    base = None
    if args.environment is not None:  # the fit is added to the calibration there: read it first, fail before fitting
        from ..model.network import WEIGHTS_FILE, sha256_file, verify_model_file

        base = CovarianceCalibration.load(out, sha256_file(verify_model_file(args.model, WEIGHTS_FILE)))
    fitted = calibrate_covariance(
        [(Path(m), Path(s)) for m, s in args.drive],
        args.model,
        _localizer_config(args),
        modes=tuple(args.modes),
        prior_noise=tuple(args.prior_noise),
        stride=args.stride,
        gross=tuple(args.gross),
        progress=not args.json,
        environment=args.environment,
    )
    cal, where = fitted, ""
    if base is not None:  # its other entries stay
        cal = base.with_environment(args.environment, fitted.modes, fitted.info)
        where = f" (environments.{args.environment})"
    cal.save(out)
    if args.json:
        print(json.dumps(cal.to_json(), indent=2))
    else:
        print(format_calibration(fitted))
        print(f"written: {out}{where}")
    return 0


def _cmd_calibrate_confidence(args: argparse.Namespace) -> int:
    from ..pose_confidence import CONFIDENCE_FILE
    from .calibrate import calibrate_confidence, format_confidence

    out = args.out if args.out is not None else args.model / CONFIDENCE_FILE
    model = calibrate_confidence(
        [(Path(m), Path(s)) for m, s in args.drive],
        args.model,
        _localizer_config(args),
        modes=tuple(args.modes),
        prior_noise=tuple(args.prior_noise),
        stride=args.stride,
        progress=not args.json,
    )
    model.save(out)
    if args.json:
        print(json.dumps(model.to_json(), indent=2))
    else:
        print(format_confidence(model))
        for pair, why in model.info.get("skipped", {}).items():
            print(f"not fitted: {pair}: {why}")
        print(f"written: {out}")
    return 0


def _evaluate_result(args: argparse.Namespace) -> int:
    """Score what a replay recorded (result directory or result bag) against the bag's ground truth."""
    from .report import format_table
    from .trajectory import evaluate_result

    summary = evaluate_result(args.result, args.ground_truth, out_dir=args.report, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_table(summary))
        if args.report is not None:
            print(f"report: {Path(args.report) / 'report.md'}")
    return 0


def _add_common(p: argparse.ArgumentParser, map_required: bool = True) -> None:
    p.add_argument(
        "--map", type=Path, required=map_required, default=None, help="map directory (ep2p-loc build-map --model)"
    )
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_DIR, help="model directory (default: the shipped models/)"
    )
    p.add_argument("--config", type=Path, default=None, help="YAML with LocalizerConfig fields (nested ipr/pnp)")
    p.add_argument("--top-k", dest="top_k", type=int, default=None, help="submaps tried from retrieval")
    p.add_argument("--no-ipr", dest="use_ipr", action="store_false", default=None, help="ablation: skip IPR")
    p.add_argument(
        "--no-refine",
        dest="refine_pixels",
        action="store_false",
        default=None,
        help="ablation: patch centres instead of the pixel-refinement MLP",
    )
    p.add_argument(
        "--pnp-covariance",
        dest="calibrated_covariance",
        action="store_false",
        default=None,
        help="PnP's covariance alone, without the model error of MODEL/covariance.json",
    )
    p.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime providers")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _add_metres_degrees(p: argparse.ArgumentParser, flag: str, default: Any, help_text: str) -> None:
    """An option taking a distance and an angle (``--prior-noise 1 3``)."""
    p.add_argument(
        flag,
        dest=flag.lstrip("-").replace("-", "_"),
        nargs=2,
        type=float,
        metavar=("METRES", "DEGREES"),
        default=default,
        help=help_text,
    )


def _add_calibration_args(p: argparse.ArgumentParser, out_file: str) -> None:
    """What both calibrations take: the drives, the model, a localizer config, the output file, the modes and the
    tracking priors' noise."""
    p.add_argument(
        "--drive",
        nargs=2,
        action="append",
        required=True,
        metavar=("MAP", "SEQUENCE"),
        help="a map directory and the KITTI-layout sequence to localize in it (repeat for more drives)",
    )
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_DIR, help="model directory (default: the shipped models/)"
    )
    p.add_argument("--config", type=Path, default=None, help="YAML with LocalizerConfig fields (nested ipr/pnp)")
    p.add_argument("--out", type=Path, default=None, help=f"output file (default: MODEL/{out_file})")
    p.add_argument(
        "--modes", nargs="+", choices=("global", "tracking"), default=["global", "tracking"], help="modes to fit"
    )
    _add_metres_degrees(
        p, "--prior-noise", (1.0, 3.0), "tracking priors: the true pose moved and turned this much (default: 1 m, 3°)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize",
        help="localize one image in a map",
        description="Retrieval (or a prior) -> IPR -> patch classification -> pixel refinement -> RANSAC PnP + LM. "
        "Exit code 0 when a pose was found, 1 when not (the status says why).",
    )
    _add_common(p)
    p.add_argument("--image", type=Path, required=True, help="image file (PNG/JPEG)")
    p.add_argument("--calib", type=Path, required=True, help="KITTI odometry calib.txt or object calib/*.txt")
    p.add_argument("--prior", default=None, help="prior T_map_cam as a JSON 4x4 list (tracking mode)")
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser(
        "evaluate",
        help="localize every image of a KITTI-layout sequence and score it against its poses",
        description="In process (--map, --sequence): recall at (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°), error "
        "statistics, inlier ratio, retrieval recall@1/5, per-stage latency, NEES. On a replay (--result): the same "
        "plus ATE after alignment (evo), share localized, latency distribution and drops, with an optional report.",
    )
    _add_common(p, map_required=False)
    p.add_argument("--sequence", type=Path, default=None, help="KITTI odometry-layout sequence directory")
    p.add_argument("--result", type=Path, default=None, help="a replay's result directory or result bag instead")
    p.add_argument(
        "--ground-truth",
        dest="ground_truth",
        type=Path,
        default=None,
        help="bag with /ground_truth/pose for --result (default: the input bag the result names)",
    )
    p.add_argument("--report", type=Path, default=None, help="with --result: write report.md + plots here")
    p.add_argument("--stride", type=int, default=1, help="every n-th frame")
    p.add_argument("--max-frames", dest="max_frames", type=int, default=None, help="at most this many frames")
    p.add_argument(
        "--use-prior", dest="use_prior", action="store_true", help="tracking mode: the true pose as the prior"
    )
    _add_metres_degrees(
        p,
        "--prior-noise",
        None,
        "tracking mode from a wrong prior: the true pose moved and turned by this much in random directions",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "calibrate-covariance",
        help="measure the model's pose errors on held-out drives and store the covariance term it needs",
        description="Localize each drive globally and from noisy priors (tracking) with PnP's covariance alone, "
        "then fit per mode the model-error covariance (camera axes) that makes the median NEES consistent (χ²₆). "
        "Writes MODEL/covariance.json (atomically), which the localizer and the node add to PnP's covariance. "
        "Use drives the model never trained on.",
    )
    _add_calibration_args(p, "covariance.json")
    _add_metres_degrees(
        p,
        "--gross",
        (5.0, 10.0),
        "errors beyond these are gross failures, left out of the fit and counted (default: 5 m, 10°)",
    )
    p.add_argument("--stride", type=int, default=1, help="every n-th frame")
    p.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        default=None,
        help="fit for maps of this environment only (every drive's map must be one) and add the fit to the existing "
        "calibration in OUT, whose other entries stay; the localizer uses it on such maps instead of the pooled one",
    )
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "calibrate-confidence",
        help="fit how likely a pose is right from what the localizer measures (on held-out drives)",
        description="Localize each drive globally and from noisy priors (tracking), then fit per map environment and "
        "mode a logistic model of the probability that a pose is within 0.5 m / 5° of the truth from its alignment "
        "score, its matches' support and PnP's inlier ratio. Writes MODEL/confidence.json (atomically); every "
        "aligned result then carries its confidence. Use drives the model never trained on, of each environment.",
    )
    _add_calibration_args(p, "confidence.json")
    p.add_argument("--stride", type=int, default=1, help="every n-th frame")
    p.add_argument("--json", action="store_true", help="print the fitted model as JSON")
    p.set_defaults(func=_cmd_calibrate_confidence)
