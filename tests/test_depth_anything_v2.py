"""Depth Anything V2: published key layout, loading, errors, batching and pixel alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from annotators.common import AnnotatorInputError, MissingWeightsError
from annotators.depth_anything_v2 import WEIGHT_FILE, DepthAnythingV2, DepthAnythingV2Config, DepthAnythingV2Model
from annotators.hed import HEDModel

# Shapes of the published depth_anything_v2_vits.pth (DINOv2 ViT-S/14 + DPT head, features 64,
# out_channels 48/96/192/384), taken from the reference implementation's module definitions.
PUBLISHED_SHAPES = {
    "pretrained.cls_token": (1, 1, 384),
    "pretrained.pos_embed": (1, 1370, 384),
    "pretrained.mask_token": (1, 384),
    "pretrained.patch_embed.proj.weight": (384, 3, 14, 14),
    "pretrained.blocks.11.attn.qkv.weight": (1152, 384),
    "pretrained.blocks.11.mlp.fc1.weight": (1536, 384),
    "pretrained.blocks.0.ls1.gamma": (384,),
    "pretrained.norm.weight": (384,),
    "depth_head.projects.0.weight": (48, 384, 1, 1),
    "depth_head.projects.3.weight": (384, 384, 1, 1),
    "depth_head.resize_layers.0.weight": (48, 48, 4, 4),
    "depth_head.resize_layers.1.weight": (96, 96, 2, 2),
    "depth_head.resize_layers.3.weight": (384, 384, 3, 3),
    "depth_head.scratch.layer1_rn.weight": (64, 48, 3, 3),
    "depth_head.scratch.layer4_rn.weight": (64, 384, 3, 3),
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight": (64, 64, 3, 3),
    "depth_head.scratch.refinenet1.out_conv.weight": (64, 64, 1, 1),
    "depth_head.scratch.output_conv1.weight": (32, 64, 3, 3),
    "depth_head.scratch.output_conv2.0.weight": (32, 32, 3, 3),
    "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1),
}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    torch.save(DepthAnythingV2.random(seed=0).model.state_dict(), folder / WEIGHT_FILE)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return DepthAnythingV2.from_folder(weights_dir)


def test_saved_random_weights_have_the_published_layout(weights_dir):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert len(state) == 239
    assert not any(key.startswith("depth_head.scratch.layer") and key.endswith("bias") for key in state)
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_loader_adopts_the_file_tensors(weights_dir, detector):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    loaded = detector.model.state_dict()
    assert set(loaded) == set(state)
    for key in ("pretrained.pos_embed", "pretrained.blocks.5.attn.proj.weight", "depth_head.scratch.output_conv2.2.bias"):
        assert torch.equal(loaded[key], state[key])
    assert detector.model.config == DepthAnythingV2Config.preset("vits")


def test_output_is_one_normalised_map_per_image_at_the_input_size(detector):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 41, 53, 3), dtype=np.uint8)
    depth = detector(batch, resolution=42)
    assert depth.shape == (2, 41, 53) and depth.dtype == np.float32
    for frame in depth:
        assert frame.min() == 0.0 and frame.max() == pytest.approx(1.0)
    # Frames are independent: the batched pass equals running each frame alone.
    alone = np.concatenate([detector(frame[None], resolution=42) for frame in batch])
    np.testing.assert_allclose(depth, alone, atol=1e-4)


@pytest.mark.parametrize("shape", [(33, 47), (33, 47, 1), (33, 47, 4)])
def test_gray_rgba_and_odd_sizes_are_accepted(detector, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert detector(image, resolution=28).shape == (1, 33, 47)


class BrightnessAsDisparity(nn.Module):
    """Stand-in network: disparity = input brightness, so the map must reproduce the picture."""

    def __init__(self) -> None:
        super().__init__()
        self.config = DepthAnythingV2Config()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen_sizes: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen_sizes.append(tuple(image.shape))
        return image.mean(dim=1)


@pytest.mark.parametrize("size, resolution", [((90, 130), 518), ((301, 207), 140)])
def test_map_is_aligned_with_the_input_and_near_is_bright(size, resolution):
    height, width = size
    stub = BrightnessAsDisparity()
    detector = DepthAnythingV2(stub)
    image = np.zeros((height, width, 3), np.uint8)
    top, left = height // 3, width // 2 + 3
    image[top : top + 20, left : left + 14] = 255  # a near object
    depth = detector(image, resolution=resolution)[0]
    batch, channels, net_h, net_w = stub.seen_sizes[0]
    assert net_h % 14 == 0 and net_w % 14 == 0 and min(net_h, net_w) >= resolution
    ys, xs = np.nonzero(depth > 0.5)
    assert abs(ys.min() - top) <= 1 and abs(ys.max() - (top + 19)) <= 1
    assert abs(xs.min() - left) <= 1 and abs(xs.max() - (left + 13)) <= 1
    assert depth[top + 10, left + 7] == pytest.approx(1.0, abs=0.02) and depth[2, 2] == pytest.approx(0.0, abs=1e-6)


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    torch.save(HEDModel().state_dict(), tmp_path / "ControlNetHED.pth")  # a HED file in the published layout
    with pytest.raises(AnnotatorInputError) as caught:
        DepthAnythingV2.from_file(tmp_path / "ControlNetHED.pth")
    assert "ControlNetHED.pth" in str(caught.value) and "looks like the ControlNet HED model" in str(caught.value)

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    del state["depth_head.scratch.refinenet2.out_conv.bias"]
    state["depth_head.projects.1.weight"] = torch.zeros(95, 384, 1, 1)
    torch.save(state, tmp_path / "garbled.pth")
    with pytest.raises(AnnotatorInputError) as caught:
        DepthAnythingV2.from_file(tmp_path / "garbled.pth")
    message = str(caught.value)
    assert "garbled.pth" in message and "'depth_head.scratch.refinenet2.out_conv.bias'" in message
    assert "'depth_head.projects.1.weight' expected [96, 384, 1, 1] found [95, 384, 1, 1]" in message

    prefixed = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    torch.save({"model." + key: value for key, value in prefixed.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(AnnotatorInputError, match="Only the key prefix differs: every key in the file has the extra prefix 'model.'"):
        DepthAnythingV2.from_file(tmp_path / "prefixed.pth")

    (tmp_path / "random.pth").write_bytes(b"\x00not a checkpoint" * 20)
    with pytest.raises(AnnotatorInputError, match="cannot read weight file"):
        DepthAnythingV2.from_file(tmp_path / "random.pth")

    with pytest.raises(MissingWeightsError) as missing:
        DepthAnythingV2.from_folder(tmp_path)
    assert WEIGHT_FILE in str(missing.value) and str(tmp_path) in str(missing.value)


def test_model_handles_the_training_grid_and_other_grids():
    # A 4×4 positional grid: 56×56 inputs use it as stored, other sizes resample it.
    config = DepthAnythingV2Config(depth=4, intermediate_layers=(0, 1, 2, 3), pos_embed_grid=4)
    model = DepthAnythingV2Model(config).eval()
    with torch.no_grad():
        native = model(torch.randn(1, 3, 56, 56))
        other = model(torch.randn(2, 3, 28, 70))
    assert native.shape == (1, 56, 56) and other.shape == (2, 28, 70)
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.randn(1, 3, 30, 28))
