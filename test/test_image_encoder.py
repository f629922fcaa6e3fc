"""Image encoder (shapes, normalisation, gradients) and preprocessing (resize + exact camera scaling)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ep2p_loc_ros.calib import read_kitti_object_calib
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import PinholeCamera
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.image_encoder import ImageEncoder
from ep2p_loc_ros.model.preprocess import camera_for_network, prepare_image, resize_camera

KITTI_OBJECT = Path(__file__).parent / "data" / "kitti_object"
torch.set_num_threads(2)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, as after training (the zero-init gammas would hide branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def kitti_image_and_camera(index: int = 0) -> tuple[np.ndarray, PinholeCamera]:
    rgb = np.asarray(Image.open(KITTI_OBJECT / "image_2" / f"{index:06d}.png").convert("RGB"))
    calib = read_kitti_object_calib(KITTI_OBJECT / "calib" / f"{index:06d}.txt", (rgb.shape[1], rgb.shape[0]))
    return rgb, calib.camera


@pytest.mark.parametrize(
    "config",
    [ModelConfig(), ModelConfig(image_height=64, image_width=128, feature_dim=32, global_dim=16)],
    ids=["default", "small"],
)
def test_image_encoder_output_shapes_and_normalisation(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = ImageEncoder(config).eval()
    randomise_batchnorm(model)
    images = torch.rand(2, 3, config.image_height, config.image_width)
    with torch.no_grad():
        patch, global_ = model(images)
    rows, cols = config.grid_size
    assert patch.shape == (2, config.feature_dim, rows, cols)
    assert global_.shape == (2, config.global_dim)
    assert torch.allclose(patch.norm(dim=1), torch.ones(2, rows, cols), atol=1e-5)
    assert torch.allclose(global_.norm(dim=1), torch.ones(2), atol=1e-5)
    # Features depend on the image: two different images give different descriptors and patches.
    assert (global_[0] - global_[1]).abs().max() > 1e-4
    assert (patch[0] - patch[1]).abs().max() > 1e-3


def test_image_encoder_size_budget() -> None:
    model = ImageEncoder(ModelConfig())
    assert model.num_parameters() < 3_000_000  # float32: < 12 MB of the 30 MB the shipped model may take


def test_image_encoder_rejects_bad_shapes() -> None:
    model = ImageEncoder(ModelConfig())
    for shape in [(1, 3, 190, 640), (1, 1, 192, 640), (3, 192, 640)]:
        with pytest.raises(ValueError, match="multiples of 32"):
            model(torch.rand(shape))


def test_image_encoder_gradient_flows() -> None:
    torch.manual_seed(0)
    config = ModelConfig(image_height=64, image_width=128)
    model = ImageEncoder(config).train()
    randomise_batchnorm(model)
    images = torch.rand(2, 3, 64, 128, requires_grad=True)
    patch, global_ = model(images)
    target_patch = torch.nn.functional.normalize(torch.randn_like(patch), dim=1)
    loss = -(patch * target_patch).sum(1).mean() - (global_[0] * global_[1]).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"
    assert images.grad is not None and images.grad.abs().max() > 0


def test_image_encoder_zero_init_blocks_start_as_identity() -> None:
    """Fresh model: every residual branch ends in a zero-gamma BN, so training starts from identity blocks."""
    model = ImageEncoder(ModelConfig())
    gammas = [m.conv2[1].weight for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(gammas) == 6 and all(float(g.detach().abs().max()) == 0.0 for g in gammas)


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("dist", [np.zeros(5), np.array([-0.3, 0.1, 1e-3, -2e-3, 0.0])], ids=["pinhole", "plumb_bob"])
def test_image_encoder_preprocess_camera_scaling_is_exact(dist: np.ndarray) -> None:
    """A 3D point projected with the original camera, then mapped by the resize, = the scaled camera's projection."""
    K = np.array([[721.5377, 0.3, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    camera = PinholeCamera(1242, 375, K, dist)
    config = ModelConfig()
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-20, 20, 500), rng.uniform(-3, 3, 500), rng.uniform(2, 60, 500)])
    uv = camera.project(points).uv
    sx, sy = config.image_width / 1242, config.image_height / 375
    expected = (uv + 0.5) * [sx, sy] - 0.5
    net = camera_for_network(camera, config)
    assert (net.width, net.height) == (config.image_width, config.image_height)
    np.testing.assert_allclose(net.project(points).uv, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(net.dist, camera.dist)
    # Image corners (pixel-edge coordinates) map to the network image's corners.
    np.testing.assert_allclose((np.array([-0.5, 1241.5]) + 0.5) * sx - 0.5, [-0.5, config.image_width - 0.5])


def test_image_encoder_preprocess_isotropic_matches_geometry_scaled() -> None:
    camera = PinholeCamera.from_params(1280, 384, 700.0, 710.0, 640.2, 190.7)
    ours = resize_camera(camera, 640, 192)
    ref = camera.scaled(0.5)
    assert (ours.width, ours.height) == (ref.width, ref.height)
    np.testing.assert_allclose(ours.K, ref.K, rtol=0, atol=1e-12)


def test_image_encoder_preprocess_pixels_land_where_the_camera_says() -> None:
    """Content check of the convention: a blob's centroid after INTER_AREA resizing is at the scaled-camera pixel."""
    camera = PinholeCamera.from_params(1242, 375, 721.5, 721.5, 609.6, 172.9)
    point = np.array([[3.1, -0.7, 25.0]])
    u, v = camera.project(point).uv[0]
    cols, rows = np.meshgrid(np.arange(1242), np.arange(375))
    blob = np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * 8.0**2))
    rgb = np.repeat((255 * blob).round().astype(np.uint8)[..., None], 3, axis=2)
    image, net = prepare_image(rgb, camera, ModelConfig())
    small = image[0, 0].astype(np.float64)
    r, c = np.mgrid[: small.shape[0], : small.shape[1]]
    centroid = np.array([(small * c).sum(), (small * r).sum()]) / small.sum()
    np.testing.assert_allclose(centroid, net.project(point).uv[0], atol=0.05)


def test_image_encoder_preprocess_output_on_kitti() -> None:
    rgb, camera = kitti_image_and_camera(0)
    config = ModelConfig()
    image, net = prepare_image(rgb, camera, config)
    assert image.shape == (1, 3, 192, 640) and image.dtype == np.float32 and image.flags.c_contiguous
    assert image.min() >= 0.0 and image.max() <= 1.0
    ref = cv2.resize(rgb, (640, 192), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(image[0], ref, atol=1e-6)
    assert net.fx == pytest.approx(camera.fx * 640 / rgb.shape[1])
    # Already at the network size: no resampling at all, same camera.
    same, same_cam = prepare_image(np.ascontiguousarray(rgb[:192, :640]), PinholeCamera(640, 192, net.K), config)
    np.testing.assert_allclose(same[0], rgb[:192, :640].transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(same_cam.K, net.K, atol=1e-12)


@pytest.mark.parametrize(
    ("rgb", "match"),
    [
        (np.zeros((375, 1242, 3), np.float32), "dtype uint8"),
        (np.zeros((375, 1242), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((375, 1242, 4), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((370, 1224, 3), np.uint8), "1224x370 but the camera"),
        (np.zeros((16, 1242, 3), np.uint8), "too small"),
        ([[0, 0, 0]], "numpy array"),
    ],
    ids=["float", "mono", "rgba", "size_mismatch", "tiny", "list"],
)
def test_image_encoder_preprocess_rejects_bad_input(rgb: object, match: str) -> None:
    camera = PinholeCamera.from_params(1242, 375, 721.5, 721.5, 609.6, 172.9)
    with pytest.raises(DataError, match=f"^/topic/image: .*{match}"):
        prepare_image(rgb, camera, ModelConfig(), source="/topic/image")  # type: ignore[arg-type]
