"""End-to-end training: patch classification + pixel refinement + retrieval + Monte-Carlo pose loss.

Runs on CPU or one GPU, and under ``torchrun`` with DistributedDataParallel (each rank takes its share of the
frames; rank 0 logs and writes). Checkpoints are safetensors (weights and optimizer moments) plus a JSON state
(step, RNG states), so training resumes exactly where it stopped; the final model directory is written
atomically (config, weights, ONNX image encoder).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from .config import ModelConfig
from .dataset import FrameSample, SequenceData
from .epro_pnp import MonteCarloPoseLoss
from .losses import make_targets, matching_losses, pose_loss, retrieval_loss
from .network import EP2PLocNet, load_network, save_model_dir
from .point_encoder import PointGraph, build_point_graph, cell_priority

__all__ = ["TrainConfig", "TrainingModel", "freeze_sample", "train", "training_prior"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    match_points: int = 512  # visible in-image points per sample for the matching losses
    other_points: int = 192  # hidden / outside points per sample (the "not in this image" class)
    pixel_points: int = 192  # points per sample for the in-patch pixel loss
    pose_points: int = 384  # most confident matches per sample for the pose loss
    mc_samples: int = 128
    huber_delta: float = 5.0  # Huber kernel of the pose loss, in weighted pixels
    pose_weight: float = 0.2  # of the per-point KL pose loss
    pose_warmup: int = 200  # steps before the pose loss joins (matches are random before that)
    use_pose_loss: bool = True
    retrieval_weight: float = 0.5
    grad_clip: float = 5.0
    log_every: int = 10
    checkpoint_every: int = 100
    # Image side only: the point encoder stays as initialised (``init_from``) and each frame's sample and point
    # features are computed once and kept in memory (:func:`freeze_sample`: 2.3 MB a frame outdoors with the
    # stage-6 recipe, against 4.3 MB for the whole sample and its features). Why: on a CPU the point encoder's
    # backward pass is ~85 % of a step, so this gives about 8x the steps for the image encoder and the heads.
    # Resuming works, but is not bit-exact in this mode: the cache starts empty and frames are sampled again.
    freeze_point_encoder: bool = False
    # Worker processes that make samples and their kNN graphs ahead of the step (0: in the loop's own process).
    # Why: a sample and its graph take ~0.18 s of CPU a frame (bench/bench_train_step.py); a GPU step shorter than
    # that would wait for them. Frame n of a run is then a function of (seed, rank, n) alone.
    workers: int = 0
    photometric_jitter: float = 0.0  # brightness/contrast jitter amplitude (0: off), e.g. 0.2 for +-20 %
    # Train the patch classifier with the soft geometric prior the run time adds after retrieval (each point's
    # projection from a guess camera off the true one like a retrieved viewpoint, LocalizerConfig.viewpoint_sigma_*).
    # Why: trained without it, the classifier spends its capacity on what the prior already says (roughly where a
    # point lands) instead of what it leaves open (where along its ray, i.e. the camera's offset along its axis).
    viewpoint_prior: bool = False
    viewpoint_forward_m: float = 6.0  # the guess is up to this far ahead or behind the camera (uniform) ...
    viewpoint_lateral_m: float = 0.3  # ... this far to the side, up or down (standard deviation) ...
    viewpoint_yaw_deg: float = 1.0  # ... and turned this much about the vertical (standard deviation)
    # The share of frames that get the prior (with ``viewpoint_prior``). Why: trained with it on every frame, the
    # classifier leans on it, and without a prior (global localization before retrieval narrows the view, the
    # no-prior ablation) its top-1 patch falls; a mix keeps both skills.
    viewpoint_prior_fraction: float = 1.0


class TrainingModel(nn.Module):
    """Wraps the network so one ``forward`` computes every loss (what DistributedDataParallel needs)."""

    def __init__(self, net: EP2PLocNet, cfg: TrainConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.mc_loss = MonteCarloPoseLoss(num_samples=cfg.mc_samples, huber_delta=cfg.huber_delta)

    def encode_points(self, s: FrameSample) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, global descriptor) of a sample's points: the ones :func:`freeze_sample` stored, else the
        point encoder's (with gradients)."""
        device = self.net.log_weight_scale.device
        context = self.net.point_encoder.context
        if s.point_features is not None and s.point_descriptor is not None:
            feats = torch.from_numpy(s.point_features).to(device).float()
            if context is not None:  # the frozen encoder's features, the trainable context on top
                feats = context(feats, torch.from_numpy(s.point_context).to(device).float())
            return feats, torch.from_numpy(s.point_descriptor).to(device)
        graph = s.point_graph if s.point_graph is not None else sample_graph(s, self.net.config)  # a worker's, or now
        out = self.net.point_encoder.forward_graph(graph)
        feats = out.features if context is None else context.widen(s.points_map, out.features)
        return feats, out.global_descriptor

    def forward(
        self, batch: list[FrameSample], rng: np.random.Generator, use_pose: bool, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        cfg, mcfg = self.cfg, self.net.config
        device = self.net.log_weight_scale.device
        images = torch.from_numpy(np.stack([s.image for s in batch]).astype(np.float32, copy=False)).to(device)
        if cfg.photometric_jitter > 0:
            a = cfg.photometric_jitter
            gain = torch.from_numpy(rng.uniform(1 - a, 1 + a, (len(batch), 1, 1, 1)).astype(np.float32))
            bias = torch.from_numpy(rng.uniform(-a / 4, a / 4, (len(batch), 1, 1, 1)).astype(np.float32))
            images = (images * gain.to(device) + bias.to(device)).clamp(0.0, 1.0)
        patch_feats, img_desc = self.net.image_encoder(images)
        terms: dict[str, list[torch.Tensor]] = {"patch": [], "pixel": [], "patch_acc": [], "pose": []}
        sub_desc = []
        for b, s in enumerate(batch):
            point_feats, point_desc = self.encode_points(s)
            sub_desc.append(point_desc)
            uv = torch.from_numpy(s.uv)
            idx = _draw_rows(s, mcfg, cfg.match_points, cfg.other_points, rng)
            if len(idx) == 0:
                continue
            sel = torch.from_numpy(idx)
            feats = point_feats[sel.to(device)]
            targets = make_targets(uv[sel].to(device), torch.from_numpy(s.visible[idx]).to(device), mcfg)
            prior = training_prior(s, idx, cfg, rng) if _prior_this_frame(cfg, rng) else None
            prior = None if prior is None else (prior[0].to(device), prior[1].to(device))
            losses = matching_losses(
                self.net.head, feats, patch_feats[b], targets, max_pixel_points=cfg.pixel_points, prior=prior
            )
            for k in ("patch", "pixel", "patch_acc"):
                terms[k].append(losses[k])
            front = np.isfinite(s.uv[idx, 0])  # at run time IPR never offers points behind the camera
            if use_pose and front.sum() >= 6:
                T = torch.from_numpy(s.T_cam_map).to(device)
                lp = pose_loss(
                    self.net.head,
                    feats[torch.from_numpy(front).to(device)],
                    patch_feats[b],
                    torch.from_numpy(s.points_map[idx[front]]).to(device),
                    torch.from_numpy(s.camera.K).to(device),
                    T[:3, :3],
                    T[:3, 3],
                    self.mc_loss,
                    self.net.log_weight_scale,
                    max_points=cfg.pose_points,
                    generator=generator,
                )
                if lp is not None:
                    terms["pose"].append(lp.float())
        result = {k: torch.stack(v).mean() for k, v in terms.items() if v}
        if len(batch) > 1:
            result["retrieval"] = retrieval_loss(img_desc, torch.stack(sub_desc))
        total = result["patch"] + result["pixel"]
        if "retrieval" in result:
            total = total + cfg.retrieval_weight * result["retrieval"]
        if "pose" in result:
            total = total + cfg.pose_weight * result["pose"]
        result["total"] = total
        return result


def _prior_this_frame(cfg: TrainConfig, rng: np.random.Generator) -> bool:
    """Whether this frame trains with the viewpoint prior; draws from ``rng`` only for a fraction below 1, so runs
    with every frame primed keep the random stream (and the results) they had before the option existed."""
    if not cfg.viewpoint_prior or cfg.viewpoint_prior_fraction <= 0.0:
        return False
    return cfg.viewpoint_prior_fraction >= 1.0 or bool(rng.random() < cfg.viewpoint_prior_fraction)


def training_prior(
    s: FrameSample, rows: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The run time's soft viewpoint prior for the sample's ``rows``: (expected network pixels (M, 2), Σ⁻¹/2
    (M, 2, 2)) from a guess camera drawn off the true one as a retrieved viewpoint is (``cfg.viewpoint_*``), with
    the spreads the localizer's defaults give (``LocalizerConfig.viewpoint_sigma_*``; the forward one without its
    submap-spacing term: a training guess is drawn within ``cfg.viewpoint_forward_m`` of the camera, where the
    run time's retrieved viewpoint may be a few submaps away). Points behind the guess get no prior (zero weight)."""
    from ..geometry import invert, make_T, transform_points
    from ..localizer import LocalizerConfig, prior_cov_px
    from ..upright_ransac import rot_y
    from .heads import half_precision

    offset = [
        rng.normal(0.0, cfg.viewpoint_lateral_m),
        rng.normal(0.0, cfg.viewpoint_lateral_m),
        rng.uniform(-cfg.viewpoint_forward_m, cfg.viewpoint_forward_m),
    ]
    turn = rot_y(np.radians(rng.normal(0.0, cfg.viewpoint_yaw_deg)))
    T_guess_map = invert(make_T(turn, offset)) @ s.T_cam_map  # the guess camera in the true camera's frame
    in_guess = transform_points(T_guess_map, s.points_map[rows])
    lc = LocalizerConfig()
    s_xyz = (lc.viewpoint_sigma_lateral_m, lc.viewpoint_sigma_vertical_m, lc.viewpoint_sigma_forward_m)
    cov = prior_cov_px(in_guess, s.camera, s_xyz, (0.0, lc.viewpoint_sigma_yaw_deg, 0.0))
    ahead = in_guess[:, 2] > 0.5
    expected = np.where(ahead[:, None], s.camera.project(in_guess).uv, 0.0).astype(np.float32)
    weight = half_precision(torch.from_numpy(cov)) * torch.from_numpy(ahead.astype(np.float32))[:, None, None]
    return torch.from_numpy(expected), weight


def _draw_rows(
    s: FrameSample, mcfg: ModelConfig, n_in_image: int, n_other: int, rng: np.random.Generator
) -> np.ndarray:
    """Random rows of a sample: up to ``n_in_image`` points seen in an image patch, then up to ``n_other``
    hidden or outside ones (the "not in this image" class)."""
    inside = (make_targets(torch.from_numpy(s.uv), torch.from_numpy(s.visible), mcfg).patch < mcfg.num_patches).numpy()
    pos, neg = np.flatnonzero(inside), np.flatnonzero(~inside)
    return np.concatenate([rng.permutation(pos)[:n_in_image], rng.permutation(neg)[:n_other]])


def sample_graph(s: FrameSample, config: ModelConfig, workers: int | None = None) -> PointGraph:
    """The point encoder's kNN graph of a sample: its points relative to the (jittered) viewpoint, the coarse
    points ranked by their *map* cells, so that training crops and map submaps pick the same ones."""
    priority = cell_priority(s.points_map, config.point_voxel)
    return build_point_graph(s.points_local, s.reflectance, config, workers=workers, priority=priority)


# --------------------------------------------------------------------------- frozen point encoder


@torch.no_grad()
def freeze_sample(net: EP2PLocNet, s: FrameSample, cfg: TrainConfig, rng: np.random.Generator) -> FrameSample:
    """The sample as the frozen-encoder cache keeps it: the point encoder's features computed once, on the whole
    crop; only a fixed random subset of the rows (twice what a step draws: ``2 * match_points`` in-image and
    ``2 * other_points`` other points, so steps still draw different points); the image in float16.

    Why: the full sample with its features is 4.3 MB a frame outdoors (15-24k points, float32 image), which caps
    the worlds that fit in memory; this keeps what the losses can use in about half of that (2.3 MB with
    ``--match-points 4096 --other-points 512``): 26 worlds (3,900 frames) trained in 9.2 GB.
    """
    device = net.log_weight_scale.device
    out = net.point_encoder.forward_graph(sample_graph(s, net.config))
    rows = np.sort(_draw_rows(s, net.config, 2 * cfg.match_points, 2 * cfg.other_points, rng))
    keep = torch.from_numpy(rows).to(device)
    context = net.point_encoder.context
    if context is not None:  # the cell statistics of the whole crop, for the rows kept
        s = replace(s, point_context=context.pool(s.points_map, out.features)[keep].half().cpu().numpy())
    return replace(
        s,
        image=s.image.astype(np.float16),
        points_map=s.points_map[rows],
        points_local=s.points_local[rows],
        reflectance=s.reflectance[rows],
        visible=s.visible[rows],
        uv=s.uv[rows],
        point_features=out.features[keep].half().cpu().numpy(),
        point_descriptor=out.global_descriptor.float().cpu().numpy(),
    )


# --------------------------------------------------------------------------- samples made in worker processes


class _Samples(torch.utils.data.Dataset):
    """Item ``(n, si, fi)``: frame ``fi`` of sequence ``si`` as the run's n-th sample, with its kNN graph.

    Its randomness (the viewpoint jitter) comes from ``(seed, rank, n)`` alone, so it does not depend on which
    worker made it or when: resuming at sample n is exact.
    """

    def __init__(self, data: list[SequenceData], config: ModelConfig, seed: int, rank: int) -> None:
        self.data, self.config, self.seed, self.rank = data, config, seed, rank

    def __getitem__(self, task: tuple[int, int, int]) -> FrameSample:
        n, si, fi = task
        s = self.data[si].sample(fi, self.config, np.random.default_rng([self.seed, self.rank, n]))
        return replace(s, point_graph=sample_graph(s, self.config, workers=1))


class _Tasks(torch.utils.data.Sampler):
    """The run's samples from number ``start`` on, without end: each pass over the frames in an order drawn from
    ``(seed, pass)``, shared by all ranks, so that the ranks split every pass between them."""

    def __init__(self, frames: list[tuple[int, int]], seed: int, rank: int, world: int, start: int) -> None:
        self.frames, self.seed, self.rank, self.world, self.start = frames, seed, rank, world, start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        per_pass = len(range(self.rank, len(self.frames), self.world))
        if per_pass == 0:
            raise DataError(f"{len(self.frames)} frames cannot be shared by {self.world} training processes")
        n, mine = self.start, None
        while True:
            if mine is None or n % per_pass == 0:
                mine = np.random.default_rng([self.seed, n // per_pass]).permutation(len(self.frames))[
                    self.rank :: self.world
                ]
            si, fi = self.frames[mine[n % per_pass]]
            yield n, si, fi
            n += 1


def _as_is(item: FrameSample) -> FrameSample:
    return item


def _sample_stream(
    data: list[SequenceData],
    frames: list[tuple[int, int]],
    config: ModelConfig,
    cfg: TrainConfig,
    rank: int,
    world: int,
    start: int,
) -> Iterator[FrameSample]:
    """Samples number ``start``, ``start + 1``, ... made by ``cfg.workers`` processes, a few ahead of the step."""
    loader = torch.utils.data.DataLoader(
        _Samples(data, config, cfg.seed, rank),
        batch_size=None,
        sampler=_Tasks(frames, cfg.seed, rank, world, start),
        num_workers=cfg.workers,
        collate_fn=_as_is,
        prefetch_factor=4,
        multiprocessing_context="fork",  # the workers share the fused maps and KD-trees with this process
    )
    return iter(loader)


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(
    path: Path,
    model: TrainingModel,
    opt: torch.optim.Optimizer,
    step: int,
    rng: np.random.Generator,
    order: list,
    cursor: int,
    generator: torch.Generator,
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    names = {id(p): n for n, p in model.net.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"opt.{names[id(p)]}.{k}"] = v.detach().cpu().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp.with_suffix(".safetensors")))
    state = {
        "step": step,
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state().tolist(),
        "mc_rng": generator.get_state().tolist(),  # the pose loss's Monte-Carlo samples
        "order": [list(map(int, o)) for o in order],
        "cursor": cursor,
    }
    tmp.with_suffix(".json").write_text(json.dumps(state))
    tmp.with_suffix(".safetensors").replace(path.with_suffix(".safetensors"))
    tmp.with_suffix(".json").replace(path.with_suffix(".json"))


def _load_checkpoint(path: Path, model: TrainingModel, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path.with_suffix(".safetensors")))
        state = json.loads(path.with_suffix(".json").read_text())
    except Exception as exc:  # any fault in a checkpoint means: cannot resume from it
        raise DataError(f"{path}: cannot resume from checkpoint ({exc})") from exc
    model.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.net.named_parameters())
    for name, p in params.items():
        st = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
        if st:
            opt.state[p] = st
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state


# --------------------------------------------------------------------------- loop


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def train(
    sequence_dirs: list[str | Path],
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    cfg: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    init_from: str | Path | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Train on the given KITTI-layout sequences (directories or training packs); write the model directory
    ``out_dir``. Returns final metrics.

    ``init_from`` (a model directory) starts from its weights and configuration with a fresh optimizer and
    schedule: fine-tuning, e.g. after a change to the encoders' inputs, without paying for the first hours again.
    ``time_limit_s``: stop after this much training time, checkpoint and write the model at the step reached
    (the schedule stays the one for ``cfg.steps``, so ``resume`` carries on where it stopped).
    """
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    if cfg.freeze_point_encoder and init_from is None:
        raise DataError("--freeze-point-encoder needs --init-from: a frozen, untrained point encoder learns nothing")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    if cfg.workers > 0 and cfg.freeze_point_encoder:
        raise DataError(
            "--workers makes samples for the point encoder's training; with --freeze-point-encoder "
            "each frame's sample is made once and cached, so leave --workers at 0"
        )
    if not 0.0 <= cfg.photometric_jitter < 1.0:
        raise ValueError(f"photometric_jitter must be in [0, 1), got {cfg.photometric_jitter}")
    if not 0.0 <= cfg.viewpoint_prior_fraction <= 1.0:
        raise ValueError(f"viewpoint_prior_fraction must be in [0, 1], got {cfg.viewpoint_prior_fraction}")
    if cfg.viewpoint_prior_fraction < 1.0 and not cfg.viewpoint_prior:
        raise ValueError("viewpoint_prior_fraction below 1 needs viewpoint_prior, or it does nothing")
    init_net = None
    if init_from is not None:
        init_net, _ = load_network(init_from)
        # the one change a fine-tune may make: give a model without one a point context module (starts as identity)
        allowed = [init_net.config]
        if model_config is not None and not init_net.config.point_context_cells:
            allowed.append(replace(init_net.config, point_context_cells=model_config.point_context_cells))
        if model_config is not None and model_config not in allowed:
            raise DataError(f"{init_from}: its model configuration differs from the one asked for")
        model_config = model_config or init_net.config
    model_config = model_config or ModelConfig()
    rank, world = _dist()
    dev = torch.device(
        device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    )
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".training")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + rank)
    generator = torch.Generator().manual_seed(cfg.seed + rank)

    data = [SequenceData(d, progress=progress and rank == 0) for d in sequence_dirs]
    frames = [(si, fi) for si, sd in enumerate(data) for fi in range(len(sd))]
    if not frames:
        raise DataError("training needs at least one frame")
    net = EP2PLocNet(model_config)
    if init_net is not None:
        missing, unexpected = net.load_state_dict(init_net.state_dict(), strict=False)
        if unexpected or any(not k.startswith("point_encoder.context.") for k in missing):
            raise DataError(f"{init_from}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    net = net.to(dev)
    model = TrainingModel(net, cfg)
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    if cfg.freeze_point_encoder:
        net.point_encoder.requires_grad_(False)
        if net.point_encoder.context is not None:  # cheap: trained on the cached features
            net.point_encoder.context.requires_grad_(True)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )

    step, order, cursor = 0, [], 0
    ckpt = work / "checkpoint"
    if resume and ckpt.with_suffix(".json").exists():
        state = _load_checkpoint(ckpt, model, opt)
        step, order, cursor = state["step"], [tuple(o) for o in state["order"]], state["cursor"]
        rng.bit_generator.state = state["rng"]
        if "mc_rng" in state:
            generator.set_state(torch.tensor(state["mc_rng"], dtype=torch.uint8))
        with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping an optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                sched.step()
    log_path = work / "metrics.jsonl"
    log = open(log_path, "a") if rank == 0 else None  # noqa: SIM115 - kept open for the whole run
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not progress or rank != 0)
    last: dict[str, float] = {}
    t_start = time.perf_counter()
    samples: dict[tuple[int, int], FrameSample] = {}
    net.train()
    if cfg.freeze_point_encoder:
        net.point_encoder.eval()
    # With workers the samples come numbered from a stream; ``cursor`` then counts those used (``order`` stays empty)
    stream = _sample_stream(data, frames, model_config, cfg, rank, world, cursor) if cfg.workers > 0 else None
    while step < cfg.steps:
        batch = []
        while len(batch) < cfg.batch_size:
            if stream is not None:
                batch.append(next(stream))
                cursor += 1
                continue
            if cursor >= len(order):
                order = [frames[i] for i in rng.permutation(len(frames))][rank::world]
                cursor = 0
            si, fi = order[cursor]
            cursor += 1
            if not cfg.freeze_point_encoder:
                batch.append(data[si].sample(fi, model_config, rng))
                continue
            if (si, fi) not in samples:  # frozen: a frame's sample (and its point features) are made once
                samples[(si, fi)] = freeze_sample(net, data[si].sample(fi, model_config, rng), cfg, rng)
            batch.append(samples[(si, fi)])
        use_pose = cfg.use_pose_loss and step >= cfg.pose_warmup
        losses = ddp(batch, rng, use_pose, generator)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        last = {k: float(v.detach()) for k, v in losses.items()}
        out_of_time = time_limit_s is not None and time.perf_counter() - t_start >= time_limit_s
        if world > 1:  # every rank stops at the same step, or the others wait in the next all-reduce forever
            flag = torch.tensor([float(out_of_time)], device=dev)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps or out_of_time):
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "lr": sched.get_last_lr()[0],
                        "elapsed_s": round(time.perf_counter() - t_start, 1),
                        **last,
                    }
                )
                + "\n"
            )
            log.flush()
        bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k in ("total", "patch_acc", "pose")})
        bar.update(1)
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time):
            _save_checkpoint(ckpt, model, opt, step, rng, order, cursor, generator)
        if out_of_time:
            break
    bar.close()
    stream = None  # ends the sample workers
    if log is not None:
        log.close()
    if rank == 0:
        net.eval()
        info = {
            "train": asdict(cfg),
            "sequences": [str(Path(d)) for d in sequence_dirs],
            "init_from": None if init_from is None else str(init_from),
            "final_metrics": last,
            "steps_done": step,
            "train_time_s": round(time.perf_counter() - t_start, 1),
        }
        save_model_dir(net.cpu(), out_dir, info)
    if world > 1:
        torch.distributed.barrier()
    return last
