"""Where the pose error comes from: PnP on the matcher's output with oracle help (held-out drives).

For every n-th frame of a held-out drive (the sequences and maps ``bench/eval_model.py`` caches; made if missing)
it takes the submap whose viewpoint is nearest the true camera, keeps the points visible from that viewpoint
(IPR, thinned to ``max_points`` like the localizer), matches them with the shipped settings (patch centres, the
per-patch cap), and runs the localizer's PnP (upright search around the viewpoint, then LM) on:

- ``centres``: every match at its patch centre (what the pipeline searches on);
- ``centres, 25 % most confident``: the same, only the quarter of the matches the classifier is surest of;
- ``pixel MLP``: every match refined by the in-patch MLP;
- ``perfect refinement``: the true pixel for each match whose patch is right, the centre otherwise: the best any
  in-patch refinement could do with these patches;
- ``right patches only, centres`` / ``right patches only, true pixels``: the outliers removed by the oracle.

``--at camera`` takes the points visible from the true camera instead (IPR there), and the classifier's figures
come apart for the frames turned more than ``--turned-deg`` from every viewpoint: what the matcher makes of views
the map's viewpoints never faced (indoors, the camera turning into a room). It also prints how often the
classifier is right: top-1 / top-5 patch over all visible points, top-1 within one /
two patches of the truth, the right-patch share of the matches and of the 10 % most confident ones. Why: it says
which part of the matcher limits the fine recall (R@0.5m,5°), the patch classification or the pixel inside the
patch. And how distinct the features are: their effective dimensions (participation ratio of the PCA variances;
per frame, the in-image points' and the patches'), and the share of in-image points whose feature has a twin
(cosine > 0.95) more than two patches away, which no patch classifier can tell apart.

    python bench/match_oracle.py [--model models] [--kinds outdoor indoor] [--stride 3] [--seed outdoor=902 ...]
        [--at viewpoint|camera] [--turned-deg 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from eval_model import DRIVES, parse_seeds, prepare_drive  # bench/ is the script's directory, so first on sys.path

    from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
    from ep2p_loc_ros.evaluation.metrics import pose_errors
    from ep2p_loc_ros.geometry import invert, transform_points
    from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
    from ep2p_loc_ros.map import nearest_submaps
    from ep2p_loc_ros.model.heads import patch_index
    from ep2p_loc_ros.model.preprocess import prepare_image
    from ep2p_loc_ros.pnp import solve_pnp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    ap.add_argument("--kinds", nargs="+", default=list(DRIVES), choices=list(DRIVES))
    ap.add_argument("--stride", type=int, default=3, help="every n-th frame")
    ap.add_argument("--seed", nargs="+", default=[], metavar="KIND=SEED", help="another world seed for a drive")
    ap.add_argument("--at", choices=("viewpoint", "camera"), default="viewpoint", help="where IPR sees the points from")
    ap.add_argument("--turned-deg", type=float, default=10.0, help="with --at camera: a turned frame's least turn")
    args = ap.parse_args()
    seeds = parse_seeds(ap, args.seed)
    torch.set_grad_enabled(False)

    print(f"# PnP with oracle help, model {args.model}\n")
    print("| drive | matches | variant | frames | R@0.5m,5° | R@1m,5° | R@5m,10° | median t (m) | median R (°) |")
    print("|---|---|---|---|---|---|---|---|---|")
    stats_rows = []
    for kind in args.kinds:
        seq_dir, map_dir = prepare_drive(kind, args.cache, args.model, args.cache / "oracle", seeds[kind])
        seq = KittiOdometrySequence(seq_dir)
        cam = seq.calib.camera
        cfg = LocalizerConfig()
        loc = Localizer.from_paths(map_dir, args.model, cfg)
        mcfg, head = loc.model_config, loc.head
        errors: dict[str, list[tuple[float, float]]] = {}
        stats: dict[str, list] = {}  # the drive's frames, or (--at camera) apart by whether they are turned
        axes = np.asarray(loc.map.T_map_viewpoint)[:, :3, 2]  # the viewpoints' optical axes
        for i in range(0, len(seq), args.stride):
            T = seq.T_world_cam(i)
            sub = loc.map.submap(int(nearest_submaps(loc.map, T, 1)[0][0]))
            image, cam_net = prepare_image(seq.image(i), cam, mcfg, f"frame {i}")
            patches = torch.from_numpy(np.ascontiguousarray(loc.session.run(image)[0][0]))
            # The localizer's own point selection: IPR at the viewpoint (or camera), thinned evenly to max_points.
            pts, _, rows = loc._visible(
                sub, T if args.at == "camera" else sub.T_map_viewpoint, cam, {"ipr": 0.0}, features=False
            )
            feats = torch.from_numpy(np.asarray(sub.features[rows], np.float32))
            uv = torch.from_numpy(cam_net.project(transform_points(invert(T), pts)).uv.astype(np.float32))
            seen = torch.isfinite(uv).all(1)
            in_image = seen & (uv[:, 0] > -0.5) & (uv[:, 0] < mcfg.image_width - 0.5)
            in_image &= (uv[:, 1] > -0.5) & (uv[:, 1] < mcfg.image_height - 0.5)
            truth = patch_index(torch.nan_to_num(uv), mcfg)
            top5 = head.in_image_logits(feats, patches).topk(5, dim=1).indices
            cols = mcfg.grid_size[1]
            off = patch_offset(top5[:, 0], truth, cols)  # how many patches top-1 is off
            idx, centres, conf = head.match(
                feats, patches, max_per_patch=cfg.max_matches_per_patch, max_matches=cfg.max_matches, refine=False
            )
            right = in_image[idx] & (truth[idx] == patch_index(centres, mcfg))
            confident = torch.argsort(conf, descending=True)[: max(1, len(conf) // 10)]
            # How distinct the features are: effective dimensions, and points with a near twin far away
            inside = feats[in_image]
            far = patch_offset(truth[in_image, None], truth[None, in_image], cols)
            twin = (inside @ inside.T).masked_fill(far <= 2, -2.0).max(1).values > 0.95 if len(inside) > 1 else None
            group = f"{kind} ({seeds[kind]})"
            if args.at == "camera":
                turn = np.degrees(np.arccos(np.clip(axes @ T[:3, 2], -1.0, 1.0))).min()
                group += f", turned {'>' if turn > args.turned_deg else '<='} {args.turned_deg:g}°"
            stats.setdefault(group, []).append(
                (
                    float((top5[:, 0] == truth)[in_image].float().mean()),
                    float((top5 == truth[:, None]).any(1)[in_image].float().mean()),
                    float((off <= 1)[in_image].float().mean()),
                    float((off <= 2)[in_image].float().mean()),
                    float(right.float().mean()),
                    float(right[confident].float().mean()),
                    participation_ratio(inside) if twin is not None else np.nan,
                    participation_ratio(patches.flatten(1).T),
                    float(twin.float().mean()) if twin is not None else np.nan,
                    len(idx),
                )
            )
            top25 = torch.argsort(conf, descending=True)[: max(1, len(conf) // 4)]
            mlp = head.refine_pixels(feats[idx], patches, centres)
            variants = {
                "centres": (idx, centres),
                "centres, 25 % most confident": (idx[top25], centres[top25]),
                "pixel MLP": (idx, mlp),
                "perfect refinement": (idx, torch.where(right[:, None], uv[idx], centres)),
                "right patches only, centres": (idx[right], centres[right]),
                "right patches only, true pixels": (idx[right], uv[idx][right]),
            }
            scale = np.array([cam.width / cam_net.width, cam.height / cam_net.height])
            for name, (sel, px) in variants.items():
                px_orig = (px.numpy().astype(np.float64) + 0.5) * scale - 0.5
                est = solve_pnp(pts[sel.numpy()], px_orig, cam, cfg.pnp, guess=sub.T_map_viewpoint)
                if est.T_world_cam is None:
                    errors.setdefault(name, []).append((np.inf, np.inf))
                    continue
                te, re = pose_errors(est.T_world_cam[None], T[None])
                errors.setdefault(name, []).append((float(te[0]), float(re[0])))
            print(f"{kind} frame {i}: {len(idx)} matches, {int(right.sum())} in the right patch", flush=True)
        groups = [(group, np.array(rows)) for group, rows in sorted(stats.items())]
        stats_rows += groups
        s = np.concatenate([rows for _, rows in groups])  # the drive's frames, all groups
        for name, errs in errors.items():
            e = np.nan_to_num(np.array(errs), nan=np.inf)
            t, r = e[:, 0], e[:, 1]
            print(
                f"| {kind} ({seeds[kind]}) | {s[:, -1].mean():.0f} | {name} | {len(e)} | "
                f"{np.mean((t < 0.5) & (r < 5)):.0%} | {np.mean((t < 1) & (r < 5)):.0%} | "
                f"{np.mean((t < 5) & (r < 10)):.0%} | {np.median(t):.2f} | {np.median(r):.2f} |"
            )
    print(
        f"\nThe classifier, IPR at the {args.at}:\n"
        "\n| drive | frames | top-1 patch (visible points) | top-5 | top-1 within 1 / 2 patches "
        "| right patch (matches) | right (10 % most confident) | effective dims: points / patches "
        "| points with a twin > 2 patches away |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, s in stats_rows:
        m = np.nanmean(s, axis=0)
        print(
            f"| {kind} | {len(s)} | {m[0]:.1%} | {m[1]:.1%} | {m[2]:.1%} / {m[3]:.1%} | {m[4]:.1%} | {m[5]:.1%} "
            f"| {m[6]:.1f} / {m[7]:.1f} | {m[8]:.0%} |"
        )


def patch_offset(a: torch.Tensor, b: torch.Tensor, cols: int) -> torch.Tensor:
    """How many patches apart row-major patch indices ``a`` and ``b`` are (rows or columns, whichever is more)."""
    return torch.maximum((a // cols - b // cols).abs(), (a % cols - b % cols).abs())


def participation_ratio(x: torch.Tensor) -> float:
    """Effective number of dimensions of the rows of ``x``: (sum of PCA variances)² / sum of their squares."""
    var = torch.linalg.svdvals((x - x.mean(0)).double()) ** 2
    return float(var.sum() ** 2 / (var**2).sum())


if __name__ == "__main__":
    main()
