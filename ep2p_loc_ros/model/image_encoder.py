"""Image encoder: per-patch features at stride 8 and a global descriptor, small enough for a CPU in real time.

Layout (channels from ``ModelConfig.image_channels = (c0, c1, c2, c3)``):

    image [0,1] -> (x - mean) / std
    stem    3x3 s2 -> c0/2, 3x3 s2 -> c0                     stride 4
    stage1  BasicBlock(c0 -> c1, s2), BasicBlock(c1)          stride 8   (the patch grid)
    stage2  BasicBlock(c1 -> c2, s2), BasicBlock(c2)          stride 16  (context)
    stage3  BasicBlock(c2 -> c3, s2), BasicBlock(c3)          stride 32  (context, global descriptor)
    FPN-lite: 1x1 laterals to c1, nearest x2 up-sampling, sum into stride 8, 3x3 fuse -> 1x1 -> feature_dim, L2
    global:  GeM(stage3) -> linear -> global_dim, L2

Why this shape: each stride-8 cell is one EP2P-Loc patch and must be recognisable from the LiDAR side, which
needs context far beyond 8 px (a pole vs. a tree trunk); the stride-16/32 paths bring a receptive field of the
whole image height at little cost because they run on 4x/16x fewer cells. BatchNorm (spatial statistics over
B x H x W, fine for small batches of large images) folds into the convolutions at export, so inference is plain
Conv+ReLU. ReLU and nearest up-sampling keep the ONNX graph to ops every execution provider fuses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the universal torch spelling

from .config import ModelConfig

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "GeM", "ImageEncoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(c_in, c_out, 3, stride)
        self.conv2 = conv_bn_relu(c_out, c_out, 3, 1, relu=False)
        self.shortcut = (
            conv_bn_relu(c_in, c_out, 1, stride, relu=False) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): between average (p=1) and max (p→∞), p learned."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)  # p < 1 would turn the pooling into a soft-min and is never useful
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class ImageEncoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> ``(patch_features (B, D, H/8, W/8), global_descriptor (B, G))``, L2-normalised.

    H and W must be multiples of 32; the exported ONNX model is fixed to the config's size, the torch module
    accepts any such size (training crops, tests).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if len(config.image_channels) != 4:
            raise ValueError(f"image_channels needs 4 entries (stem, s8, s16, s32), got {config.image_channels}")
        c0, c1, c2, c3 = config.image_channels
        self.config = config
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(conv_bn_relu(3, max(c0 // 2, 8), 3, 2), conv_bn_relu(max(c0 // 2, 8), c0, 3, 2))
        self.stage1 = nn.Sequential(BasicBlock(c0, c1, 2), BasicBlock(c1, c1))
        self.stage2 = nn.Sequential(BasicBlock(c1, c2, 2), BasicBlock(c2, c2))
        self.stage3 = nn.Sequential(BasicBlock(c2, c3, 2), BasicBlock(c3, c3))
        self.lateral3 = nn.Conv2d(c3, c1, 1)
        self.lateral2 = nn.Conv2d(c2, c1, 1)
        self.fuse = conv_bn_relu(c1, c1, 3)
        self.project = nn.Conv2d(c1, config.feature_dim, 1)
        self.gem = GeM()
        self.global_head = nn.Linear(c3, config.global_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                # Zero-init the last BN of each residual branch: every block starts as identity, which trains
                # faster and more stably from scratch (Goyal et al. 2017).
                nn.init.zeros_(m.conv2[1].weight)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and (image.ndim != 4 or image.shape[1] != 3 or image.shape[2] % 32 or image.shape[3] % 32):
            raise ValueError(f"expected images (B, 3, H, W) with H, W multiples of 32, got {tuple(image.shape)}")
        x = (image - self.mean) * self.inv_std
        s8 = self.stage1(self.stem(x))
        s16 = self.stage2(s8)
        s32 = self.stage3(s16)
        top = self.lateral2(s16) + F.interpolate(self.lateral3(s32), scale_factor=2.0, mode="nearest")
        fused = self.fuse(s8 + F.interpolate(top, scale_factor=2.0, mode="nearest"))
        patch_features = F.normalize(self.project(fused), dim=1)
        global_descriptor = F.normalize(self.global_head(self.gem(s32)), dim=1)
        return patch_features, global_descriptor

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
