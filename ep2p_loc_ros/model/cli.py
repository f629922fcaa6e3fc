"""``ep2p-loc train``, ``ep2p-loc export`` and ``ep2p-loc pack-training``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from .config import ModelConfig


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .train import TrainConfig, train

    torch.set_num_threads(max(1, args.threads))
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    cfg = TrainConfig(**overrides)
    model_config = None if args.init_from else ModelConfig()
    if args.point_context_cells:
        from dataclasses import replace

        from .network import read_model_config

        base = read_model_config(args.init_from)[0] if args.init_from else ModelConfig()
        model_config = replace(base, point_context_cells=tuple(args.point_context_cells))
    limit = None if args.time_limit is None else 60.0 * args.time_limit
    metrics = train(
        args.sequences,
        args.out,
        model_config,
        cfg,
        resume=args.resume,
        device=args.device,
        init_from=args.init_from,
        time_limit_s=limit,
    )
    print(json.dumps({"model_dir": str(args.out), "final": metrics}, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_image_encoder
    from .network import load_network, save_model_dir

    net, info = load_network(args.model, verify=False)  # shapes and NaN still checked; checksums rewritten
    if args.out is None:  # re-export in place: weights, ONNX and checksums rewritten together, atomically
        save_model_dir(net, args.model, info)
        print(f"exported {args.model}")
        return 0
    export_image_encoder(net.image_encoder, net.config, args.out)
    print(f"exported {args.out}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from .network import read_model_config
    from .training_pack import write_training_pack

    config = read_model_config(args.model)[0] if args.model is not None else ModelConfig()
    path = write_training_pack(args.sequence, args.out, config, jpeg_quality=args.jpeg_quality)
    print(json.dumps({"pack": str(path), "bytes": path.stat().st_size}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the EP2P-Loc network end to end on KITTI-layout sequences",
        description="Patch classification + pixel refinement + retrieval + Monte-Carlo PnP pose loss. Writes a "
        "model directory (config.json, model.safetensors, image_encoder.onnx); checkpoints and metrics.jsonl go "
        "to OUT.training/. Runs under torchrun (DistributedDataParallel) too.",
    )
    p.add_argument(
        "sequences",
        nargs="+",
        type=Path,
        help="KITTI odometry-layout sequence directories, or their training packs (.npz, `ep2p-loc pack-training`)",
    )
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--resume", action="store_true", help="continue from OUT.training/checkpoint")
    p.add_argument(
        "--init-from",
        dest="init_from",
        type=Path,
        default=None,
        help="fine-tune: start from this model directory's weights (fresh optimizer and schedule)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        help="processes that make samples and their kNN graphs ahead of the step (default 0: in the training "
        "process); a sample takes ~0.18 s of CPU a frame, so on a GPU give them most of the cores",
    )
    p.add_argument("--steps", type=int, help="optimisation steps")
    p.add_argument(
        "--time-limit",
        dest="time_limit",
        type=float,
        default=None,
        metavar="MIN",
        help="stop after MIN minutes of training (checkpoint and model written at the step reached; --resume "
        "goes on), e.g. on a machine lent for a set time",
    )
    p.add_argument("--batch-size", dest="batch_size", type=int, help="frames per step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed (data order, sampling, initialisation)")
    p.add_argument("--pose-warmup", dest="pose_warmup", type=int, help="steps before the pose loss joins")
    p.add_argument("--pose-weight", dest="pose_weight", type=float, help="weight of the Monte-Carlo pose loss")
    p.add_argument(
        "--no-pose-loss",
        dest="use_pose_loss",
        action="store_false",
        default=None,
        help="ablation: train without the differentiable PnP loss",
    )
    p.add_argument(
        "--match-points",
        dest="match_points",
        type=int,
        help="in-image points per frame in the patch loss (the point encoder runs on all of them anyway)",
    )
    p.add_argument(
        "--other-points", dest="other_points", type=int, help="hidden / outside points per frame in the patch loss"
    )
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="steps between checkpoints")
    p.add_argument(
        "--freeze-point-encoder",
        dest="freeze_point_encoder",
        action="store_true",
        default=None,
        help="fine-tune the image side only (needs --init-from): point features are computed once per frame and "
        "kept in memory (~2.3 MB a frame), about 8x faster steps on a CPU",
    )
    p.add_argument(
        "--point-context-cells",
        dest="point_context_cells",
        type=float,
        nargs="+",
        metavar="M",
        help="map-grid cell sizes (m) whose statistics widen each point feature's context (point_context.py); "
        "with --init-from the module is added, starting as identity, and trains with --freeze-point-encoder too",
    )
    p.add_argument(
        "--photometric-jitter",
        dest="photometric_jitter",
        type=float,
        help="brightness/contrast jitter amplitude of the training images (default 0: off)",
    )
    p.add_argument(
        "--viewpoint-prior",
        dest="viewpoint_prior",
        action="store_true",
        default=None,
        help="train the patch classifier with the soft prior the run time adds after retrieval (each point's "
        "projection from a guess camera up to 6 m ahead or behind), so it learns what the prior leaves open",
    )
    p.add_argument(
        "--viewpoint-prior-fraction",
        dest="viewpoint_prior_fraction",
        type=float,
        help="with --viewpoint-prior (refused without it): the share of frames trained with the prior, the rest "
        "without (default 1)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "export",
        help="export the image encoder of a model directory to ONNX",
        description="Re-export MODEL/image_encoder.onnx from MODEL/model.safetensors and rewrite the sha256 sums "
        "in MODEL/config.json (the whole directory is replaced atomically). With --out, write only the ONNX file.",
    )
    p.add_argument("--model", type=Path, default=Path("models"), help="model directory (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="ONNX file (default: MODEL/image_encoder.onnx)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "pack-training",
        help="pack a sequence's training data (fused map, poses, network-size JPEG images) into one .npz",
        description="Everything `ep2p-loc train` reads from a KITTI-layout sequence, in one compact file (about 10 MB "
        "for a 150-frame synthetic world instead of 386 MB): the map fused as training fuses it, the poses, the "
        "camera, and each image at the network size as JPEG. Train on it like on the directory; it needs neither "
        "the raw scans nor Open3D. Made for one network image size (--model's, or the default).",
    )
    p.add_argument("sequence", type=Path, help="KITTI odometry-layout sequence directory")
    p.add_argument("--out", type=Path, required=True, help="pack file to write (.npz)")
    p.add_argument("--model", type=Path, default=None, help="pack for this model directory's image size")
    p.add_argument("--jpeg-quality", dest="jpeg_quality", type=int, default=95, help="JPEG quality (default 95)")
    p.set_defaults(func=_cmd_pack)
