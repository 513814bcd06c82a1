"""UniFormer ADE20K segmentation: the published key layout (written out from the reference UniFormer-S +
mmsegmentation UPerHead/FCNHead), the network against a functional forward written from the same
description, and the pre/post-processing (test scale, channel order, padding, alignment, labels,
palette) with a stand-in network whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from annotators.common import AnnotatorInputError, MissingWeightsError
from annotators.segmentation import ADE20K_PALETTE
from annotators.uniformer import WEIGHT_FILE, UniFormerSegmenter, load_uniformer
from annotators.uniformer.detector import network_size

DIMS, DEPTHS, HEAD_DIM, CHANNELS, CLASSES = (64, 128, 320, 512), (3, 4, 8, 3), 64, 512, 150


def published_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``upernet_global_small.pth``'s state_dict: mmsegmentation names, reference shapes."""
    shapes: dict[str, tuple[int, ...]] = {}

    def batch_norm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv(prefix: str, out_channels: int, in_channels: int, kernel: int, bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = (out_channels, in_channels, kernel, kernel)
        if bias:
            shapes[f"{prefix}.bias"] = (out_channels,)

    def norm(prefix: str, channels: int) -> None:
        shapes[f"{prefix}.weight"] = shapes[f"{prefix}.bias"] = (channels,)

    def linear(prefix: str, out_features: int, in_features: int) -> None:
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (out_features, in_features), (out_features,)

    inputs = (3, *DIMS[:3])
    for stage, (dim, depth, in_dim, patch) in enumerate(zip(DIMS, DEPTHS, inputs, (4, 2, 2, 2)), 1):
        conv(f"backbone.patch_embed{stage}.proj", dim, in_dim, patch)
        norm(f"backbone.patch_embed{stage}.norm", dim)
        for index in range(depth):
            block = f"backbone.blocks{stage}.{index}"
            conv(f"{block}.pos_embed", dim, 1, 3)  # depthwise
            if stage <= 2:  # CBlock
                batch_norm(f"{block}.norm1", dim)
                conv(f"{block}.conv1", dim, dim, 1)
                conv(f"{block}.attn", dim, 1, 5)  # depthwise
                conv(f"{block}.conv2", dim, dim, 1)
                batch_norm(f"{block}.norm2", dim)
                conv(f"{block}.mlp.fc1", 4 * dim, dim, 1)
                conv(f"{block}.mlp.fc2", dim, 4 * dim, 1)
            else:  # SABlock
                norm(f"{block}.norm1", dim)
                linear(f"{block}.attn.qkv", 3 * dim, dim)
                linear(f"{block}.attn.proj", dim, dim)
                norm(f"{block}.norm2", dim)
                linear(f"{block}.mlp.fc1", 4 * dim, dim)
                linear(f"{block}.mlp.fc2", dim, 4 * dim)
        norm(f"backbone.norm{stage}", dim)

    def conv_module(prefix: str, out_channels: int, in_channels: int, kernel: int) -> None:  # mmcv ConvModule + BN
        conv(f"{prefix}.conv", out_channels, in_channels, kernel, bias=False)
        batch_norm(f"{prefix}.bn", out_channels)

    for index in range(4):
        conv_module(f"decode_head.psp_modules.{index}.1", CHANNELS, DIMS[-1], 1)
    conv_module("decode_head.bottleneck", CHANNELS, DIMS[-1] + 4 * CHANNELS, 3)
    for index, dim in enumerate(DIMS[:-1]):
        conv_module(f"decode_head.lateral_convs.{index}", CHANNELS, dim, 1)
        conv_module(f"decode_head.fpn_convs.{index}", CHANNELS, CHANNELS, 3)
    conv_module("decode_head.fpn_bottleneck", CHANNELS, 4 * CHANNELS, 3)
    conv("decode_head.conv_seg", CLASSES, CHANNELS, 1)
    conv_module("auxiliary_head.convs.0", 256, DIMS[2], 3)  # training only
    conv("auxiliary_head.conv_seg", CLASSES, 256, 1)
    return shapes


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) == 1:
            state[key] = torch.randn(shape, generator=generator) * 0.1 + (1.0 if "norm" in key or ".bn." in key else 0.0) * key.endswith("weight")
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """UniFormer-S ("global") + UPerHead, written from the reference's description with functional ops."""

    def conv(h, prefix, stride=1, padding=0, groups=1):
        return F.conv2d(h, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"), stride, padding, 1, groups)

    def batch_norm(h, prefix):
        s = {name: state[f"{prefix}.{name}"] for name in ("running_mean", "running_var", "weight", "bias")}
        return F.batch_norm(h, s["running_mean"], s["running_var"], s["weight"], s["bias"], False, 0.0, 1e-5)

    def layer_norm(h, prefix, eps):
        return F.layer_norm(h, h.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)

    def channels_last_norm(h, prefix, eps):
        return layer_norm(h.permute(0, 2, 3, 1), prefix, eps).permute(0, 3, 1, 2)

    def linear(h, prefix):
        return F.linear(h, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    features, h = [], x
    for stage, (dim, depth) in enumerate(zip(DIMS, DEPTHS), 1):
        patch = 4 if stage == 1 else 2
        h = channels_last_norm(conv(h, f"backbone.patch_embed{stage}.proj", stride=patch), f"backbone.patch_embed{stage}.norm", 1e-5)
        for index in range(depth):
            block = f"backbone.blocks{stage}.{index}"
            h = h + conv(h, f"{block}.pos_embed", padding=1, groups=dim)
            if stage <= 2:
                local = conv(batch_norm(h, f"{block}.norm1"), f"{block}.conv1")
                h = h + conv(conv(local, f"{block}.attn", padding=2, groups=dim), f"{block}.conv2")
                h = h + conv(F.gelu(conv(batch_norm(h, f"{block}.norm2"), f"{block}.mlp.fc1")), f"{block}.mlp.fc2")
            else:
                batch, _, height, width = h.shape
                heads = dim // HEAD_DIM
                tokens = h.flatten(2).transpose(1, 2)
                qkv = linear(layer_norm(tokens, f"{block}.norm1", 1e-6), f"{block}.attn.qkv")
                q, k, v = qkv.reshape(batch, -1, 3, heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
                weights = ((q @ k.transpose(-2, -1)) * HEAD_DIM**-0.5).softmax(dim=-1)
                attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
                tokens = tokens + linear(attended, f"{block}.attn.proj")
                hidden = F.gelu(linear(layer_norm(tokens, f"{block}.norm2", 1e-6), f"{block}.mlp.fc1"))
                tokens = tokens + linear(hidden, f"{block}.mlp.fc2")
                h = tokens.transpose(1, 2).reshape(batch, dim, height, width)
        features.append(channels_last_norm(h, f"backbone.norm{stage}", 1e-6))

    def conv_module(h, prefix, padding):
        return F.relu(batch_norm(conv(h, f"{prefix}.conv", padding=padding), f"{prefix}.bn"))

    def up(h, size):
        return F.interpolate(h, size=size, mode="bilinear", align_corners=False)

    last = features[-1]
    pyramid = [last] + [
        up(conv_module(F.adaptive_avg_pool2d(last, scale), f"decode_head.psp_modules.{index}.1", 0), last.shape[2:])
        for index, scale in enumerate((1, 2, 3, 6))
    ]
    laterals = [conv_module(features[index], f"decode_head.lateral_convs.{index}", 0) for index in range(3)]
    laterals.append(conv_module(torch.cat(pyramid, dim=1), "decode_head.bottleneck", 1))
    for index in range(3, 0, -1):
        laterals[index - 1] = laterals[index - 1] + up(laterals[index], laterals[index - 1].shape[2:])
    outputs = [conv_module(laterals[index], f"decode_head.fpn_convs.{index}", 1) for index in range(3)] + [laterals[3]]
    outputs = [outputs[0]] + [up(output, outputs[0].shape[2:]) for output in outputs[1:]]
    return conv(conv_module(torch.cat(outputs, dim=1), "decode_head.fpn_bottleneck", 1), "decode_head.conv_seg")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Random weights in the published layout, in mmsegmentation's checkpoint container, under the real name."""
    folder = tmp_path_factory.mktemp("uniformer")
    state = random_state()
    meta = {"CLASSES": ["wall", "building"], "PALETTE": [[120, 120, 120], [180, 120, 120]], "mmcv_version": "1.3.0"}
    torch.save({"meta": meta, "state_dict": state}, folder / WEIGHT_FILE)
    return folder, state


def test_loads_the_published_checkpoint_and_computes_the_reference_network(published):
    folder, state = published
    model = load_uniformer(folder / WEIGHT_FILE)
    assert sum(value.numel() for key, value in state.items() if not key.startswith("auxiliary_head")) == sum(
        parameter.numel() for parameter in model.state_dict().values()
    )
    x = torch.randn(1, 3, 32, 64)  # small: the full-width head dominates the cost
    with torch.no_grad():
        ours, expected = model(x), reference_forward(state, x)
    assert ours.shape == (1, 150, 8, 16)
    # Attention runs through scaled_dot_product_attention here and as softmax(q kᵀ) v in the reference:
    # the same sums in another order, a few float32 ulps apart after 18 blocks.
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def placeholder_state() -> dict[str, torch.Tensor]:
    """The published layout with one stored number per tensor (expanded views): tiny files, for the checks."""
    return {key: torch.zeros(()).expand(shape) if shape else torch.tensor(0) for key, shape in published_shapes().items()}


def test_wrong_missing_and_wrapped_files(tmp_path):
    state = placeholder_state()
    wrapped = {f"module.{key}": value for key, value in state.items()}
    torch.save({"state_dict": wrapped}, tmp_path / "wrapped.pth")
    assert isinstance(load_uniformer(tmp_path / "wrapped.pth"), nn.Module)
    broken = dict(state)
    del broken["decode_head.conv_seg.bias"]
    broken["backbone.blocks3.0.attn.qkv.weight"] = broken["backbone.blocks3.0.attn.qkv.weight"][:900]
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(AnnotatorInputError) as caught:
        load_uniformer(tmp_path / "broken.pth")
    message = str(caught.value)
    assert "broken.pth" in message and "UniFormer-S UperNet ADE20K" in message and "'decode_head.conv_seg.bias'" in message
    assert "'backbone.blocks3.0.attn.qkv.weight' expected [960, 320] found [900, 320]" in message
    from annotators.hed import load_hed_model

    with pytest.raises(AnnotatorInputError, match="looks like the UniFormer-S UperNet ADE20K segmentation model"):
        load_hed_model(tmp_path / "wrapped.pth")
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(AnnotatorInputError, match="does not hold the UniFormer"):
        load_uniformer(tmp_path / "other.pth")
    with pytest.raises(MissingWeightsError) as missing:
        UniFormerSegmenter.from_folder(tmp_path)
    assert WEIGHT_FILE in str(missing.value) and str(tmp_path) in str(missing.value)


# --------------------------------------------------------------------------- pre/post-processing


class ColourNetwork(nn.Module):
    """Stands in for the network: class 3 where its input's channel 0 is bright, class 7 where channel 2
    is, as stride-4 logits (4×4 average pool). Records the inputs it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"stride": 32})()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        pooled = F.avg_pool2d(x, 4)
        logits = torch.full((x.shape[0], 150, *pooled.shape[2:]), -10.0)
        logits[:, 0] = 0.3  # black (about -2 in every channel) stays class 0; halfway to red/blue (+2.2..2.6)
        logits[:, 3], logits[:, 7] = pooled[:, 0], pooled[:, 2]
        return logits


def test_test_scale_channel_order_alignment_and_palette():
    # 300×200 (H×W): left 100 columns red, the rest blue. At resolution 128 the detection image is
    # 192×128 and mmsegmentation's ADE20K test scale (fit 2048×512) makes the network input 768×512.
    image = np.zeros((300, 200, 3), np.uint8)
    image[:, :100, 0] = 255
    image[:, 100:, 2] = 255
    network = ColourNetwork()
    segmenter = UniFormerSegmenter(network)
    labels = segmenter.labels(image, resolution=128)
    (tensor,) = network.inputs
    assert tensor.shape == (1, 3, 768, 512)
    # The reference feeds BGR: red reaches the network in channel 2, normalised with the mean/std of
    # the channel position: (255 - 103.53) / 57.375 and (0 - 123.675) / 58.395.
    assert tensor[0, 2, 0, 0].item() == pytest.approx((255 - 103.53) / 57.375, rel=1e-6)
    assert tensor[0, 0, 0, 0].item() == pytest.approx(-123.675 / 58.395, rel=1e-6)
    assert labels.shape == (1, 300, 200) and labels.dtype == np.uint8
    assert (labels[0, :, :98] == 7).all() and (labels[0, :, 102:] == 3).all()  # red → 7, blue → 3, edge at 100
    # A smaller test scale (the pipeline is the same at any) keeps the rest of the test fast.
    segmenter.test_scale = (512, 128)
    flipped = segmenter.labels(np.stack([image, image[:, ::-1]]), resolution=128)
    assert network.inputs[-1].shape == (2, 3, 192, 128)
    assert (flipped[0, :, :98] == 7).all() and (flipped[1, :, :98] == 3).all() and (flipped[1, :, 102:] == 7).all()
    maps = segmenter(image[None], resolution=128)
    assert maps.shape == (1, 300, 200, 3) and tuple(maps[0, 10, 10]) == tuple(ADE20K_PALETTE[7])


def test_network_input_is_padded_to_32_and_cropped_back():
    # 100×70 at resolution 70 → test scale 512/70: 731×512 (padded to 736×512 and cropped after).
    assert network_size(100, 70) == (731, 512) and network_size(512, 512) == (512, 512)
    assert network_size(300, 4000) == (154, 2048)  # a panorama: the 2048 long-side bound wins
    image = np.zeros((100, 70, 3), np.uint8)
    image[50:, :, 0] = 255  # bottom half red
    network = ColourNetwork()
    segmenter = UniFormerSegmenter(network)
    segmenter.test_scale = (512, 128)  # 100×70 → 183×128, padded to 192×128
    labels = segmenter.labels(image, resolution=70)
    assert network.inputs[0].shape == (1, 3, 192, 128)
    # Rows ≥ 50 are red. The stand-in's 4-pixel pooling blurs the edge by about a row; a crop that
    # missed the 9 padded rows would move it to row 47.6 (50 × 183 / 192).
    first_red = int(np.argmax((labels[0] == 7).all(axis=1)))
    assert abs(first_red - 50) <= 1, first_red
    assert (labels[0, :first_red] == 0).all() and (labels[0, first_red:] == 7).all()


def test_by_name(monkeypatch, tmp_path):
    from annotators import run_annotator

    # The full network is tested above; here the stand-in keeps the registry path fast.
    def small_scale(cls, folder):
        segmenter = cls(ColourNetwork())
        segmenter.test_scale = (256, 64)
        return segmenter

    monkeypatch.setattr(UniFormerSegmenter, "from_folder", classmethod(small_scale))
    frames = np.zeros((3, 40, 60, 3), np.uint8)
    frames[:, :, :30, 0] = 255
    result = run_annotator("seg_ufade20k", frames, models_dir=str(tmp_path), resolution=64)
    assert result.images.shape == (3, 40, 60, 3)
    assert (result.images[:, :, :28] == ADE20K_PALETTE[7]).all()
