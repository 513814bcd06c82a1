"""MiDaS DPT-Hybrid: published key layout, loading, parity with transformers' DPT-Hybrid, errors,
batching, alignment and the pre/post-processing (input scaling, normalised depth, ControlNet 1.0 normals)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from annotator_factories import StandIn, assert_box, assert_missing_file_named, load_error, randomised, save_zeros_like
from annotators.hed import HEDModel
from annotators.midas import (
    WEIGHT_FILE,
    MidasConfig,
    MidasDetector,
    MidasDPTModel,
    config_from_state_dict,
    midas_input,
    normals_from_depth,
)

R = "pretrained.model.patch_embed.backbone."
# The published dpt_hybrid-midas-501f0c75.pt: timm's vit_base_resnet50_384 (ResNetV2 stem 64, stages of
# 3/4/9 bottlenecks, 256/512/1024 channels; ViT-B/16 with a 24×24 positional grid and the 1000-class
# head) plus MiDaS' readout/reassembly and decoder, from the reference code's module definitions.
PUBLISHED_SHAPES = {
    "pretrained.model.cls_token": (1, 1, 768),
    "pretrained.model.pos_embed": (1, 577, 768),
    R + "stem.conv.weight": (64, 3, 7, 7),
    R + "stem.norm.weight": (64,),
    R + "stages.0.blocks.0.downsample.conv.weight": (256, 64, 1, 1),
    R + "stages.0.blocks.0.downsample.norm.bias": (256,),
    R + "stages.0.blocks.0.conv1.weight": (64, 64, 1, 1),
    R + "stages.0.blocks.2.conv2.weight": (64, 64, 3, 3),
    R + "stages.0.blocks.2.norm3.weight": (256,),
    R + "stages.1.blocks.0.downsample.conv.weight": (512, 256, 1, 1),
    R + "stages.1.blocks.3.conv2.weight": (128, 128, 3, 3),
    R + "stages.2.blocks.0.conv1.weight": (256, 512, 1, 1),
    R + "stages.2.blocks.8.conv3.weight": (1024, 256, 1, 1),
    "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
    "pretrained.model.blocks.0.norm1.weight": (768,),
    "pretrained.model.blocks.11.attn.qkv.weight": (2304, 768),
    "pretrained.model.blocks.11.attn.proj.bias": (768,),
    "pretrained.model.blocks.5.mlp.fc1.weight": (3072, 768),
    "pretrained.model.norm.bias": (768,),
    "pretrained.model.head.weight": (1000, 768),
    "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
    "pretrained.act_postprocess3.3.weight": (768, 768, 1, 1),
    "pretrained.act_postprocess4.0.project.0.bias": (768,),
    "pretrained.act_postprocess4.3.weight": (768, 768, 1, 1),
    "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3),
    "scratch.layer1_rn.weight": (256, 256, 3, 3),
    "scratch.layer2_rn.weight": (256, 512, 3, 3),
    "scratch.layer3_rn.weight": (256, 768, 3, 3),
    "scratch.layer4_rn.weight": (256, 768, 3, 3),
    "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "scratch.refinenet1.out_conv.weight": (256, 256, 1, 1),
    "scratch.output_conv.0.weight": (128, 256, 3, 3),
    "scratch.output_conv.2.weight": (32, 128, 3, 3),
    "scratch.output_conv.4.weight": (1, 32, 1, 1),
}
# 156 ResNet + 152 ViT tensors, 10 for the two reassembly stacks, 50 in the decoder.
PUBLISHED_KEY_COUNT = 368

# The smallest network the loader's size rules allow: GroupNorm keeps 32 groups, heads are 64 wide.
TINY = MidasConfig(
    stem_channels=32, stage_depths=(1, 1, 2), stage_channels=(128, 128, 128), embed_dim=64, depth=4,
    num_heads=1, pos_embed_grid=4, hooks=(0, 3), features=32, num_classes=10,
)


def random_model(config: MidasConfig = TINY, seed: int = 0) -> MidasDPTModel:
    return randomised(MidasDPTModel(config), seed)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    torch.save(random_model().state_dict(), folder / WEIGHT_FILE)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return MidasDetector.from_folder(weights_dir)


def test_the_published_architecture_has_the_published_keys_and_shapes():
    with torch.device("meta"):
        state = MidasDPTModel().state_dict()
    assert len(state) == PUBLISHED_KEY_COUNT
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # The ResNet has no biases (weight-standardised convs) and the first two decoder levels no readout.
    assert not any(key.startswith(R) and key.endswith("conv.bias") for key in state)
    assert not any(key.startswith(("pretrained.act_postprocess1", "pretrained.act_postprocess2")) for key in state)
    # The loader reads the published sizes back from such a file.
    assert config_from_state_dict(state, "published.pt") == MidasConfig()


def test_loader_adopts_the_file_tensors_in_every_published_container(weights_dir, tmp_path, detector):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert config_from_state_dict(state, WEIGHT_FILE) == TINY
    loaded = detector.model.state_dict()
    assert set(loaded) == set(state)
    for key in (R + "stages.2.blocks.1.conv2.weight", "pretrained.model.pos_embed", "scratch.output_conv.4.bias"):
        assert torch.equal(loaded[key], state[key])
    # MiDaS' own training checkpoints nest the weights under "model" next to the optimizer state,
    # and DataParallel saves add "module.".
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"step": 1}}, tmp_path / WEIGHT_FILE)
    wrapped = MidasDetector.from_folder(tmp_path)
    assert torch.equal(wrapped.model.scratch.layer2_rn.weight, state["scratch.layer2_rn.weight"])


def to_transformers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published MiDaS names → transformers' DPT-Hybrid names (as its conversion script renames them;
    the fused q/k/v projection is split in three, the unused ImageNet head dropped)."""
    converted = {}
    for key, value in state.items():
        if key.startswith("pretrained.model.head."):
            continue
        block = re.match(r"pretrained\.model\.blocks\.(\d+)\.(.*)", key)
        if block:
            index, rest = block.groups()
            prefix = f"dpt.encoder.layer.{index}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    converted[f"{prefix}attention.attention.{name}.{rest.split('.')[-1]}"] = part
                continue
            for old, new in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
                             ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
                rest = rest.replace(old, new)
            converted[prefix + rest] = value
            continue
        for old, new in (
            ("pretrained.model.cls_token", "dpt.embeddings.cls_token"),
            ("pretrained.model.pos_embed", "dpt.embeddings.position_embeddings"),
            ("pretrained.model.patch_embed.proj", "dpt.embeddings.projection"),
            (R + "stem.conv", "dpt.embeddings.backbone.bit.embedder.convolution"),
            (R + "stem.norm", "dpt.embeddings.backbone.bit.embedder.norm"),
            ("pretrained.model.norm", "dpt.layernorm"),
            ("scratch.output_conv", "head.head"),
        ):
            key = key.replace(old, new)
        key = re.sub(R.replace(".", r"\.") + r"stages\.(\d+)\.blocks\.", r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.", key)
        key = re.sub(r"pretrained\.act_postprocess(\d)\.0\.project\.0",
                     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0", key)
        key = re.sub(r"pretrained\.act_postprocess(\d)\.3", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection", key)
        key = re.sub(r"pretrained\.act_postprocess(\d)\.4", lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize", key)
        key = re.sub(r"scratch\.layer(\d)_rn", lambda m: f"neck.convs.{int(m[1]) - 1}", key)
        if key.startswith("scratch.refinenet"):
            key = re.sub(r"scratch\.refinenet(\d)", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}", key)
            for old, new in (("resConfUnit", "residual_layer"), (".conv1.", ".convolution1."), (".conv2.", ".convolution2."),
                             ("out_conv", "projection")):
                key = key.replace(old, new)
        converted[key] = value
    return converted


def test_output_equals_transformers_dpt_hybrid_on_the_same_weights():
    transformers = pytest.importorskip("transformers")
    model = random_model(seed=3)
    bit = transformers.BitConfig(
        embedding_size=32, depths=[1, 1, 2], hidden_sizes=[128, 128, 128, 256], num_groups=32, global_padding="SAME",
        layer_type="bottleneck", embedding_dynamic_padding=True, out_features=["stage1", "stage2", "stage3"],
    )
    config = transformers.DPTConfig(
        is_hybrid=True, backbone_config=bit, hidden_size=64, num_hidden_layers=4, num_attention_heads=1,
        intermediate_size=256, image_size=64, patch_size=16, backbone_out_indices=[0, 1, 0, 3],
        reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[128, 128, 64, 64], fusion_hidden_size=32,
        readout_type="project", use_batch_norm_in_fusion_residual=False, backbone_featmap_shape=[1, 128, 4, 4],
        layer_norm_eps=1e-6,  # timm's ViT (transformers' DPT default is 1e-12)
    )
    reference = transformers.DPTForDepthEstimation(config).eval()
    reference.load_state_dict(to_transformers_keys(model.state_dict()), strict=True)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(image)
        theirs = reference(pixel_values=image).predicted_depth
    assert ours.shape == theirs.shape == (2, 64, 64) and ours.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_other_grids_resample_the_positional_embedding():
    model = random_model(seed=1)
    with torch.no_grad():
        wide = model(torch.randn(1, 3, 64, 96))
    assert wide.shape == (1, 64, 96) and torch.isfinite(wide).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))


def test_depth_maps_come_back_normalised_at_the_input_size_and_batch_like_single_frames(detector):
    batch = np.random.default_rng(0).integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)
    depth = detector(batch, resolution=64)
    assert depth.shape == (3, 45, 70) and depth.dtype == np.float32
    for frame in depth:
        assert frame.min() == 0.0 and frame.max() == pytest.approx(1.0)
    alone = np.concatenate([detector(frame, resolution=64) for frame in batch])
    np.testing.assert_allclose(depth, alone, atol=1e-4)
    np.testing.assert_allclose(depth, detector(batch, resolution=64, batch_size=2), atol=1e-4)
    normals = detector.normals(batch, resolution=64)
    assert normals.shape == (3, 45, 70, 3) and 0.0 <= normals.min() and normals.max() <= 1.0


def BrightnessAsDisparity() -> StandIn:
    """Stand-in network: disparity = mean input value, so the map must reproduce the picture."""
    return StandIn(lambda image: image.mean(dim=1))


def test_input_is_scaled_to_minus_one_one():
    values = torch.tensor([[[[0, 0, 0], [255, 255, 255], [51, 102, 204]]]], dtype=torch.uint8)
    scaled = midas_input(values)
    expected = torch.tensor([[-1.0, 1.0, 51 / 127.5 - 1], [-1.0, 1.0, 102 / 127.5 - 1], [-1.0, 1.0, 204 / 127.5 - 1]])
    torch.testing.assert_close(scaled[0, :, 0], expected)
    stub = BrightnessAsDisparity()
    MidasDetector(stub)(np.full((64, 64, 3), 255, np.uint8), resolution=64)
    assert stub.inputs[0].shape == (1, 3, 64, 64) and bool((stub.inputs[0] == 1.0).all())


@pytest.mark.parametrize("size, resolution", [((90, 130), 128), ((301, 207), 192)])
def test_depth_is_aligned_with_the_input_and_near_is_bright(size, resolution):
    height, width = size
    stub = BrightnessAsDisparity()
    image = np.zeros((height, width, 3), np.uint8)
    top, left = height // 3, width // 2 + 3
    image[top : top + 20, left : left + 14] = 255  # a near object
    depth = MidasDetector(stub)(image, resolution=resolution)[0]
    _, _, net_h, net_w = stub.inputs[0].shape
    assert net_h % 64 == 0 and net_w % 64 == 0 and min(net_h, net_w) >= resolution
    assert_box(depth > 0.5, top, left, 20, 14)
    assert depth[top + 10, left + 7] == pytest.approx(1.0, abs=0.02) and depth[2, 2] == pytest.approx(0.0, abs=1e-6)


def test_normals_of_a_tilted_plane_and_the_background_threshold():
    # depth = 0.5·x (+10 so nothing is background): the 3×3 Sobel slope is 8·0.5 = 4 inside, 0 across
    # the reflected borders; y is flat. With a = 2π the normal is (4, 0, 2π)/|·|, stored as (z, y, x).
    depth = np.tile(np.arange(40, dtype=np.float32) * 0.5 + 10.0, (30, 1))
    normal = normals_from_depth(depth, a=2 * np.pi, bg_threshold=0.0)
    length = np.hypot(4.0, 2 * np.pi)
    expected = np.array([2 * np.pi / length, 0.0, 4.0 / length]) * 0.5 + 0.5
    np.testing.assert_allclose(normal[5:-5, 5:-5], np.broadcast_to(expected, (20, 30, 3)), atol=1e-6)
    np.testing.assert_allclose(normal[:, 0], np.broadcast_to([1.0, 0.5, 0.5], (30, 3)), atol=1e-6)
    # bg_threshold 0.5: the far (left) half of the normalised depth faces the camera: (z, y, x) = (1, 0, 0).
    thresholded = normals_from_depth(depth, a=2 * np.pi, bg_threshold=0.5)
    relative = (depth - depth.min()) / (depth.max() - depth.min())
    np.testing.assert_allclose(thresholded[relative < 0.5], np.broadcast_to([1.0, 0.5, 0.5], thresholded[relative < 0.5].shape))
    np.testing.assert_allclose(thresholded[5:-5, 25:35], normal[5:-5, 25:35])


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    message = load_error(MidasDetector.from_file, save_zeros_like(HEDModel, tmp_path / "ControlNetHED.pth"))
    assert "ControlNetHED.pth" in message and "MiDaS" in message and "looks like the ControlNet HED model" in message

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)
    del state["scratch.refinenet3.out_conv.bias"]
    state["scratch.layer2_rn.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, tmp_path / "garbled.pt")
    message = load_error(MidasDetector.from_file, tmp_path / "garbled.pt")
    assert "garbled.pt" in message and "'scratch.refinenet3.out_conv.bias'" in message
    assert "'scratch.layer2_rn.weight' expected [32, 128, 3, 3] found [32, 64, 3, 3]" in message

    assert_missing_file_named(MidasDetector.from_folder, tmp_path, WEIGHT_FILE)
