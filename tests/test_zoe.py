"""ZoeDepth: published key layout, loading, parity with transformers' ZoeDepth, the reference ``infer``
(reflect padding, network size, flip averaging), the percentile map (near = bright), errors, batching
and alignment."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from annotator_factories import StandIn, assert_box, assert_missing_file_named, load_error, randomised, save_zeros_like
from annotators.normalbae import NormalBaeConfig, NormalBaeModel
from annotators.zoe import (
    WEIGHT_FILE,
    ZoeConfig,
    ZoeDepthModel,
    ZoeDetector,
    config_from_state_dict,
    depth_to_map,
    relative_position_index,
)

B = "core.core.pretrained.model."
# The published ZoeD_M12_N.pt: timm 0.6's beit_large_patch16_384 (24 blocks of 1024, 16 heads, relative
# position tables for 24×24 patches, mean-pooling classifier), MiDaS v3.1's reassembly and decoder
# (256 features), ZoeD_N's metric head (64 softplus bins, 128-wide embeddings, attractors 16/8/4/1).
PUBLISHED_SHAPES = {
    B + "cls_token": (1, 1, 1024),
    B + "patch_embed.proj.weight": (1024, 3, 16, 16),
    B + "blocks.0.gamma_1": (1024,),
    B + "blocks.0.attn.q_bias": (1024,),
    B + "blocks.0.attn.v_bias": (1024,),
    B + "blocks.0.attn.qkv.weight": (3072, 1024),
    B + "blocks.23.attn.relative_position_bias_table": (2212, 16),
    B + "blocks.23.attn.relative_position_index": (577, 577),
    B + "blocks.12.mlp.fc1.weight": (4096, 1024),
    B + "fc_norm.weight": (1024,),
    B + "head.weight": (1000, 1024),
    "core.core.pretrained.act_postprocess1.0.project.0.weight": (1024, 2048),
    "core.core.pretrained.act_postprocess1.3.weight": (256, 1024, 1, 1),
    "core.core.pretrained.act_postprocess1.4.weight": (256, 256, 4, 4),
    "core.core.pretrained.act_postprocess2.4.weight": (512, 512, 2, 2),
    "core.core.pretrained.act_postprocess3.3.weight": (1024, 1024, 1, 1),
    "core.core.pretrained.act_postprocess4.4.weight": (1024, 1024, 3, 3),
    "core.core.scratch.layer1_rn.weight": (256, 256, 3, 3),
    "core.core.scratch.layer4_rn.weight": (256, 1024, 3, 3),
    "core.core.scratch.refinenet2.resConfUnit2.conv2.weight": (256, 256, 3, 3),
    "core.core.scratch.output_conv.2.weight": (32, 128, 3, 3),
    "conv2.weight": (256, 256, 1, 1),
    "seed_bin_regressor._net.0.weight": (256, 256, 1, 1),
    "seed_bin_regressor._net.2.weight": (64, 256, 1, 1),
    "seed_projector._net.2.weight": (128, 128, 1, 1),
    "projectors.3._net.0.weight": (128, 256, 1, 1),
    "attractors.0._net.2.weight": (16, 128, 1, 1),
    "attractors.3._net.2.weight": (1, 128, 1, 1),
    "conditional_log_binomial.mlp.0.weight": (80, 161, 1, 1),
    "conditional_log_binomial.mlp.2.weight": (4, 80, 1, 1),
    "conditional_log_binomial.log_binomial_transform.k_idx": (1, 64, 1, 1),
    "conditional_log_binomial.log_binomial_transform.K_minus_1": (1, 1, 1, 1),
}
# BEiT 17 tensors a block ×24 + 7; reassembly 22; decoder 50; metric head 48.
PUBLISHED_KEY_COUNT = 535

TINY = ZoeConfig(embed_dim=64, depth=4, num_heads=2, window=4, hooks=(0, 1, 2, 3), level_channels=(16, 32, 64, 64),
                 features=32, num_classes=10)


def random_model(config: ZoeConfig = TINY, seed: int = 0) -> ZoeDepthModel:
    return randomised(ZoeDepthModel(config), seed)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    torch.save({"model": random_model().state_dict()}, folder / WEIGHT_FILE)
    return folder


def test_the_published_architecture_has_the_published_keys_and_shapes():
    with torch.device("meta"):
        state = ZoeDepthModel().state_dict()
    assert len(state) == PUBLISHED_KEY_COUNT
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(B) and ("pos_embed" in key or ".norm." in key or "k_bias" in key) for key in state)
    assert config_from_state_dict(state, WEIGHT_FILE) == ZoeConfig()


def test_relative_position_index_follows_timms_rule():
    # 2×2 patches: table rows (dy + 1)·3 + (dx + 1) for patch pairs; 9, 10, 11 for the class token.
    patches = [(0, 0), (0, 1), (1, 0), (1, 1)]
    expected = np.zeros((5, 5), np.int64)
    for i, (r1, c1) in enumerate(patches):
        for j, (r2, c2) in enumerate(patches):
            expected[i + 1, j + 1] = (r1 - r2 + 1) * 3 + (c1 - c2 + 1)
    expected[0, :], expected[:, 0], expected[0, 0] = 9, 10, 11
    np.testing.assert_array_equal(relative_position_index(2, 2).numpy(), expected)


def test_loader_reads_the_published_container_with_or_without_index_buffers(weights_dir, tmp_path):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["model"]
    detector = ZoeDetector.from_folder(weights_dir)
    assert detector.model.config == TINY
    loaded = detector.model.state_dict()
    for key in (B + "blocks.3.attn.relative_position_bias_table", "attractors.2._net.2.bias", "core.core.scratch.layer3_rn.weight"):
        assert torch.equal(loaded[key], state[key])
    # timm ≥ 0.9 stops saving relative_position_index; such files load too (the index is recomputed).
    torch.save({"model": {k: v for k, v in state.items() if "relative_position_index" not in k}}, tmp_path / WEIGHT_FILE)
    reloaded = ZoeDetector.from_folder(tmp_path).model
    assert torch.equal(reloaded.core.core.pretrained.model.blocks[1].attn.relative_position_index, relative_position_index(4, 4))


def to_transformers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published ZoeDepth names → transformers' (as its conversion script renames them; q/k/v split,
    the classifier, the index buffers and the binomial constants dropped)."""
    converted = {}
    for key, value in state.items():
        if any(part in key for part in ("relative_position_index", "fc_norm", B + "head", "k_idx", "K_minus_1")):
            continue
        block = re.match(re.escape(B) + r"blocks\.(\d+)\.(.*)", key)
        if block:
            index, rest = block.groups()
            prefix = f"backbone.beit.layers.{index}."
            if rest == "attn.qkv.weight":
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                    converted[f"{prefix}attention.{name}.weight"] = part
                continue
            rest = {"attn.q_bias": "attention.q_proj.bias", "attn.v_bias": "attention.v_proj.bias", "gamma_1": "lambda_1",
                    "gamma_2": "lambda_2", "attn.relative_position_bias_table": "relative_position_bias.relative_position_bias_table",
                    }.get(rest, rest)
            rest = rest.replace("norm1", "layernorm_before").replace("norm2", "layernorm_after").replace("attn.proj", "attention.o_proj")
            converted[prefix + rest] = value
            continue
        key = key.replace(B + "cls_token", "backbone.beit.embeddings.cls_token")
        key = key.replace(B + "patch_embed.proj", "backbone.beit.embeddings.patch_embeddings.projection")
        key = re.sub(r"core\.core\.pretrained\.act_postprocess(\d)\.0\.project\.0",
                     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0", key)
        key = re.sub(r"core\.core\.pretrained\.act_postprocess(\d)\.3", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection", key)
        key = re.sub(r"core\.core\.pretrained\.act_postprocess(\d)\.4", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize", key)
        key = re.sub(r"core\.core\.scratch\.layer(\d)_rn", lambda m: f"neck.convs.{int(m[1]) - 1}", key)
        if "refinenet" in key:
            key = re.sub(r"core\.core\.scratch\.refinenet(\d)", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}", key)
            for old, new in (("resConfUnit", "residual_layer"), (".conv1.", ".convolution1."), (".conv2.", ".convolution2."),
                             ("out_conv", "projection")):
                key = key.replace(old, new)
        for index, name in ((0, "conv1"), (2, "conv2"), (4, "conv3")):
            key = key.replace(f"core.core.scratch.output_conv.{index}", f"relative_head.{name}")
        if not key.startswith(("backbone", "neck", "relative_head")):
            key = "metric_head." + key.replace("_net.0", "conv1").replace("_net.2", "conv2")
        converted[key] = value
    return converted


def test_metric_depth_equals_transformers_zoedepth_on_the_same_weights():
    transformers = pytest.importorskip("transformers")
    model = random_model(seed=5)
    backbone = transformers.BeitConfig(
        image_size=64, num_hidden_layers=4, hidden_size=64, intermediate_size=256, num_attention_heads=2,
        use_relative_position_bias=True, reshape_hidden_states=False, out_features=["stage1", "stage2", "stage3", "stage4"],
        layer_norm_eps=1e-6,  # timm's BEiT (transformers' default is 1e-12)
    )
    config = transformers.ZoeDepthConfig(
        backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, bottleneck_features=32,
        bin_centers_type="softplus", bin_configurations=[{"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0}],
        attractor_alpha=1000, attractor_gamma=2, attractor_kind="mean", min_temp=0.0212, max_temp=50.0,
        num_attractors=[16, 8, 4, 1], bin_embedding_dim=128,
    )
    reference = transformers.ZoeDepthForDepthEstimation(config).eval()
    reference.load_state_dict(to_transformers_keys(model.state_dict()), strict=True)
    # In float64: the log-binomial softmax (temperatures down to 0.0212) magnifies float32 rounding
    # into visible differences, and transformers builds its binomial constants in the default dtype.
    model.double(), reference.double()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for shape in ((2, 3, 64, 64), (1, 3, 64, 96)):  # the stored 4×4 grid, then a resampled bias table
            image = torch.randn(*shape, dtype=torch.float64)
            with torch.no_grad():
                ours = model(image)[:, 0]
                theirs = reference(pixel_values=image).predicted_depth
            assert ours.shape == theirs.shape == (shape[0],) + shape[2:]
            scale = float(theirs.abs().max())
            assert scale > 10.0  # random weights: maps of ~10³; they agree to 1e-11 of that
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11 * scale)
    finally:
        torch.set_default_dtype(default)


def test_network_size_is_the_references_minimal_resize():
    model = random_model()
    assert model.network_size(608, 608) == (512, 512)  # 512² detection + 48 px reflect padding per side
    assert model.network_size(608, 800) == (384, 512)  # width scale 0.64 is nearer 1 than height 0.63
    assert model.network_size(1000, 300) == (384, 128)  # height 0.384 is nearer 1 than width 1.707


def GrayAsDepth() -> StandIn:
    """Stand-in for ZoeDepthModel.forward: depth = 1 − gray, so bright (near) pixels get small depth."""
    return StandIn(lambda image: 1.0 - image.mean(dim=1, keepdim=True))


def stub_zoe() -> tuple[ZoeDepthModel, StandIn]:
    model = ZoeDepthModel(TINY)
    stub = GrayAsDepth()
    model.forward = stub.forward  # infer() calls self(...)
    return model, stub


def test_infer_pads_by_reflection_scales_to_minus_one_one_and_averages_the_flip():
    model, stub = stub_zoe()
    image = torch.zeros(1, 3, 128, 96)
    image[:, :, 40:60, 10:30] = 1.0  # an asymmetric bright patch
    depth = model.infer(image)
    assert depth.shape == (1, 1, 128, 96)
    pad_h, pad_w = int(np.sqrt(64) * 3), int(np.sqrt(48) * 3)  # 24, 20
    first, flipped = stub.inputs
    assert first.shape[-2:] == model.network_size(128 + 2 * pad_h, 96 + 2 * pad_w)
    assert first.min() == -1.0 and first.max() == 1.0
    torch.testing.assert_close(flipped, torch.flip(first, dims=[3]), rtol=0, atol=1e-4)  # resize rounding
    # Depth is small on the patch and ~2 elsewhere (1 − (−1)); the flip average keeps it in place.
    assert depth[0, 0, 50, 20] < 0.2 and depth[0, 0, 50, 80] > 1.8 and depth[0, 0, 100, 20] > 1.8


def test_depth_to_map_uses_the_2nd_and_85th_percentiles_near_bright():
    depth = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101)
    mapped = depth_to_map(depth)
    assert mapped[0, 0] == 1.0 and mapped[0, 2] == pytest.approx(1.0) and mapped[0, 85] == pytest.approx(0.0, abs=1e-6)
    assert mapped[0, 50] == pytest.approx(1 - 0.48 / 0.83, abs=1e-6) and mapped[0, 100] == 0.0
    assert depth_to_map(depth, gamma_corrected=True)[0, 50] == pytest.approx((1 - 0.48 / 0.83) ** 2.2, abs=1e-6)
    assert not depth_to_map(np.ones((4, 4), np.float32)).any()


@pytest.mark.parametrize("size, resolution", [((90, 130), 128), ((151, 103), 96)])
def test_maps_are_aligned_with_the_input_and_near_is_bright(size, resolution):
    model, _ = stub_zoe()
    height, width = size
    image = np.full((height, width, 3), 60, np.uint8)
    top, left = height // 3, width // 2 + 3
    image[top : top + 24, left : left + 18] = 255
    maps = ZoeDetector(model)(image, resolution=resolution)[0]
    assert maps.shape == (height, width)
    assert_box(maps > 0.5, top, left, 24, 18)
    assert maps[top + 12, left + 9] == pytest.approx(1.0, abs=1e-3) and maps[2, 2] == pytest.approx(0.0, abs=1e-3)


def test_real_network_batches_like_single_frames():
    # The network normally resizes towards 384×512; a smaller target keeps this test fast.
    # float64: the sharp log-binomial softmax would turn float32 rounding of batched GEMMs into
    # differences of ~1e-3 between the batch and single frames.
    detector = ZoeDetector(random_model(replace(TINY, process_size=(64, 96))).double())
    batch = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    maps = detector(batch, resolution=64)
    assert maps.shape == (2, 40, 56) and maps.dtype == np.float32 and 0.0 <= maps.min() and maps.max() <= 1.0
    alone = np.concatenate([detector(frame, resolution=64) for frame in batch])
    np.testing.assert_allclose(maps, alone, atol=1e-6)


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    normalbae = save_zeros_like(lambda: NormalBaeModel(NormalBaeConfig(stage_repeats=(1,) * 7)), tmp_path / "scannet.pt", "model")
    message = load_error(ZoeDetector.from_file, normalbae)
    assert "scannet.pt" in message and "ZoeDepth" in message and "looks like the NormalBAE model" in message

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["model"]
    del state["seed_projector._net.0.bias"]
    state["core.core.scratch.layer2_rn.weight"] = torch.zeros(32, 31, 3, 3)
    torch.save({"model": state}, tmp_path / "garbled.pt")
    message = load_error(ZoeDetector.from_file, tmp_path / "garbled.pt")
    assert "garbled.pt" in message and "'seed_projector._net.0.bias'" in message
    assert "'core.core.scratch.layer2_rn.weight' expected [32, 32, 3, 3] found [32, 31, 3, 3]" in message

    assert_missing_file_named(ZoeDetector.from_folder, tmp_path, WEIGHT_FILE)
