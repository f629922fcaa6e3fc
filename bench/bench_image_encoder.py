"""Benchmark the image encoder: torch eager vs onnxruntime (CPU, and CUDA where available), one image.

The input is a real KITTI frame (``test/data/kitti_object/image_2/000000.png``) prepared to the network size
(192x640 by default) with ``prepare_image``. The weights are random: latency does not depend on them (BN
scales are made non-zero, as after training, so the ONNX file has its deployed size). Every engine runs
single-image batches on ``--threads`` CPU threads after ``--warmup`` untimed runs; p50/p90 over ``--reps``
runs. Prints markdown tables: latency, the model's size (parameters, multiply-adds, ONNX file) and the
preprocessing time. The machine should be otherwise idle: on shared cores the p90 measures the neighbours.

    .venv/bin/python bench/bench_image_encoder.py              # ~10 s on 2 cores
    .venv/bin/python bench/bench_image_encoder.py --threads 4 --reps 200
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.calib import read_kitti_object_calib  # noqa: E402
from ep2p_loc_ros.model.config import ModelConfig  # noqa: E402
from ep2p_loc_ros.model.export import export_image_encoder  # noqa: E402
from ep2p_loc_ros.model.image_encoder import ImageEncoder  # noqa: E402
from ep2p_loc_ros.model.preprocess import prepare_image  # noqa: E402
from ep2p_loc_ros.runtime import CUDA, ImageEncoderSession, import_onnxruntime  # noqa: E402

KITTI = ROOT / "test" / "data" / "kitti_object"


def percentiles_ms(fn: Callable[[], object], reps: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def count_macs(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and linear layers (everything else is negligible here)."""
    total = 0

    def hook(module: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            total += out.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.inference_mode():
        model(image)
    for h in handles:
        h.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig()
    rgb = np.asarray(Image.open(KITTI / "image_2" / "000000.png").convert("RGB"))
    camera = read_kitti_object_calib(KITTI / "calib" / "000000.txt", (rgb.shape[1], rgb.shape[0])).camera
    prep_p50, prep_p90 = percentiles_ms(lambda: prepare_image(rgb, camera, config), args.reps, args.warmup)
    image, _ = prepare_image(rgb, camera, config)
    x = torch.from_numpy(image)

    model = ImageEncoder(config).eval()
    with torch.no_grad():  # as after training: a fresh model's zero-init BN gammas would export as shared zeros
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    params = model.num_parameters()
    macs = count_macs(model, x)
    rows: list[tuple[str, float, float]] = []
    with torch.inference_mode():
        rows.append(("torch eager (CPU)", *percentiles_ms(lambda: model(x), args.reps, args.warmup)))
        if torch.cuda.is_available():  # the image already on the GPU, the result waited for
            model_gpu, x_gpu = ImageEncoder(config).eval().cuda(), x.cuda()
            model_gpu.load_state_dict(model.state_dict())

            def on_gpu() -> None:
                model_gpu(x_gpu)
                torch.cuda.synchronize()

            rows.append(
                (f"torch eager (CUDA, {torch.cuda.get_device_name()})", *percentiles_ms(on_gpu, args.reps, args.warmup))
            )

    ort = import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_image_encoder(model, config, Path(tmp) / "image_encoder.onnx")
        size_mb = path.stat().st_size / 1e6
        cpu = ImageEncoderSession(path, config, providers="cpu", intra_op_threads=args.threads)
        rows.append(
            (f"onnxruntime {ort.__version__} (CPU)", *percentiles_ms(lambda: cpu.run(image), args.reps, args.warmup))
        )
        if CUDA in ort.get_available_providers():
            gpu = ImageEncoderSession(path, config, providers="auto", intra_op_threads=args.threads)
            if gpu.provider == CUDA:
                rows.append(
                    (
                        f"onnxruntime {ort.__version__} (CUDA)",
                        *percentiles_ms(lambda: gpu.run(image), args.reps, args.warmup),
                    )
                )

    base = rows[0][1]
    print(f"## Image encoder, one {config.image_height}x{config.image_width} image, {args.threads} CPU threads\n")
    print(f"{cpu_name()}, torch {torch.__version__}, {args.reps} runs after {args.warmup} warm-up\n")
    print("| engine | p50 (ms) | p90 (ms) | speed-up vs torch (p50) |")
    print("|---|---:|---:|---:|")
    for name, p50, p90 in rows:
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {base / p50:.2f}x |")
    print()
    print("| model | value |")
    print("|---|---:|")
    print(f"| parameters | {params:,} ({params * 4 / 1e6:.1f} MB float32) |")
    print(f"| multiply-adds per image | {macs / 1e9:.3f} G ({2 * macs / 1e9:.2f} GFLOP) |")
    print(f"| ONNX file | {size_mb:.2f} MB |")
    resize = f"{rgb.shape[1]}x{rgb.shape[0]} -> {config.image_width}x{config.image_height}"
    print(f"| prepare_image ({resize}), p50 / p90 | {prep_p50:.2f} / {prep_p90:.2f} ms |")


if __name__ == "__main__":
    main()
