"""NormalBAE: published key layout, loading, encoder parity with transformers' EfficientNet, errors,
batching, alignment and the normal → RGB mapping ControlNet 1.1 normalbae was trained on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from annotator_factories import StandIn, assert_box, assert_missing_file_named, load_error, randomised, save_zeros_like
from annotators.midas import MidasConfig, MidasDPTModel
from annotators.normalbae import (
    WEIGHT_FILE,
    NormalBaeConfig,
    NormalBaeDetector,
    NormalBaeModel,
    config_from_state_dict,
    normal_to_rgb,
)

E = "encoder.original_model."


def b5_channels(base: int) -> int:
    """gen-efficientnet's round_channels for B5 (×1.6, multiples of 8, never 10 % down), written out here."""
    value = base * 1.6
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def test_b5_sizes_follow_from_the_efficientnet_recipe():
    stages = [b5_channels(c) for c in (16, 24, 40, 80, 112, 192, 320)]
    repeats = [math.ceil(r * 2.2) for r in (1, 2, 2, 3, 3, 4, 1)]
    published = NormalBaeConfig()
    assert (b5_channels(32), tuple(stages), tuple(repeats), b5_channels(1280)) == (
        published.stem_channels, published.stage_channels, published.stage_repeats, published.head_channels
    )
    # The decoder's fixed input widths in the reference (2048+176, 1024+64, 512+40, 256+24).
    assert (published.head_channels, stages[4], stages[2], stages[1], stages[0]) == (2048, 176, 64, 40, 24)


PUBLISHED_SHAPES = {
    E + "conv_stem.weight": (48, 3, 3, 3),
    E + "bn1.running_var": (48,),
    E + "blocks.0.0.conv_dw.weight": (48, 1, 3, 3),
    E + "blocks.0.0.se.conv_reduce.weight": (12, 48, 1, 1),
    E + "blocks.0.0.conv_pw.weight": (24, 48, 1, 1),
    E + "blocks.0.2.se.conv_reduce.weight": (6, 24, 1, 1),
    E + "blocks.1.0.conv_pw.weight": (144, 24, 1, 1),
    E + "blocks.1.0.se.conv_reduce.weight": (6, 144, 1, 1),
    E + "blocks.1.0.conv_pwl.weight": (40, 144, 1, 1),
    E + "blocks.2.0.conv_dw.weight": (240, 1, 5, 5),
    E + "blocks.4.6.se.conv_expand.weight": (1056, 44, 1, 1),
    E + "blocks.5.8.conv_dw.weight": (1824, 1, 5, 5),
    E + "blocks.6.2.conv_pwl.weight": (512, 3072, 1, 1),
    E + "conv_head.weight": (2048, 512, 1, 1),
    E + "bn2.num_batches_tracked": (),
    "decoder.conv2.weight": (2048, 2048, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2048 + 176, 3, 3),
    "decoder.up1._net.1.running_mean": (1024,),
    "decoder.up2._net.3.weight": (512, 512, 3, 3),
    "decoder.up3._net.0.weight": (256, 512 + 40, 3, 3),
    "decoder.up4._net.0.weight": (128, 256 + 24, 3, 3),
    "decoder.out_conv_res8.weight": (4, 512, 3, 3),
    "decoder.out_conv_res4.0.weight": (128, 512 + 4, 1),
    "decoder.out_conv_res2.0.weight": (128, 256 + 4, 1),
    "decoder.out_conv_res1.6.weight": (4, 128, 1),
}

# Multiples of 8 where transformers' and gen-efficientnet's rounding agree; transformers' stem is 32 wide.
TINY = NormalBaeConfig(
    stem_channels=32, stage_channels=(16, 16, 24, 32, 40, 48, 64), stage_repeats=(1, 2, 1, 2, 1, 2, 1),
    head_channels=1280, decoder_channels=(32, 16, 16, 8), refine_channels=8,
)


def random_model(config: NormalBaeConfig = TINY, seed: int = 0) -> NormalBaeModel:
    return randomised(NormalBaeModel(config), seed)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    # As published: the state dict under "model", saved from a DataParallel model ("module.").
    state = {f"module.{key}": value for key, value in random_model().state_dict().items()}
    torch.save({"model": state}, folder / WEIGHT_FILE)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return NormalBaeDetector.from_folder(weights_dir)


def test_the_published_architecture_has_the_published_keys_and_shapes():
    with torch.device("meta"):
        state = NormalBaeModel().state_dict()
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any("classifier" in key or "global_pool" in key for key in state)
    assert sum(1 for key in state if key.startswith(E + "blocks.") and key.endswith("conv_dw.weight")) == 39
    assert config_from_state_dict(state, WEIGHT_FILE) == NormalBaeConfig()


def test_loader_unwraps_the_published_container_and_adopts_the_tensors(weights_dir, detector):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["model"]
    loaded = detector.model.state_dict()
    assert {f"module.{key}" for key in loaded} == set(state)
    for key in (E + "blocks.3.1.conv_dw.weight", E + "bn2.running_var", "decoder.out_conv_res1.6.bias"):
        assert torch.equal(loaded[key], state[f"module.{key}"])
    assert detector.model.config == TINY


def test_a_file_without_batchnorm_counters_loads(weights_dir, tmp_path):
    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["model"]
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / WEIGHT_FILE)
    assert NormalBaeDetector.from_folder(tmp_path).model.config == TINY


def to_transformers_keys(state: dict[str, torch.Tensor], config: NormalBaeConfig) -> dict[str, torch.Tensor]:
    """gen-efficientnet names → transformers' EfficientNet names (one flat block list)."""
    ir_names = {"conv_pw": "expansion.expand_conv", "bn1": "expansion.expand_bn", "conv_dw": "depthwise_conv.depthwise_conv",
                "bn2": "depthwise_conv.depthwise_norm", "conv_pwl": "projection.project_conv", "bn3": "projection.project_bn"}
    ds_names = {"conv_dw": "depthwise_conv.depthwise_conv", "bn1": "depthwise_conv.depthwise_norm",
                "conv_pw": "projection.project_conv", "bn2": "projection.project_bn"}
    firsts = np.cumsum((0,) + config.stage_repeats)
    converted = {}
    for key, value in state.items():
        if not key.startswith(E):
            continue
        parts = key[len(E) :].split(".")
        if parts[0] == "blocks":
            stage, index, module = int(parts[1]), int(parts[2]), parts[3]
            names = ds_names if stage == 0 else ir_names
            module = {"se": "squeeze_excite"}.get(module, names.get(module, module))
            rest = ".".join(parts[4:]).replace("conv_reduce", "reduce").replace("conv_expand", "expand")
            converted[f"encoder.blocks.{firsts[stage] + index}.{module}.{rest}"] = value
        else:
            module = {"conv_stem": "embeddings.convolution", "bn1": "embeddings.batchnorm",
                      "conv_head": "encoder.top_conv", "bn2": "encoder.top_bn"}[parts[0]]
            converted[f"{module}.{'.'.join(parts[1:])}"] = value
    return converted


def test_encoder_equals_transformers_efficientnet_on_the_same_weights():
    transformers = pytest.importorskip("transformers")
    model = random_model(seed=2)
    config = transformers.EfficientNetConfig(
        width_coefficient=1.0, depth_coefficient=1.0, batch_norm_eps=1e-3,
        in_channels=[32, 16, 16, 24, 32, 40, 48], out_channels=list(TINY.stage_channels),
        num_block_repeats=list(TINY.stage_repeats), kernel_sizes=[3, 3, 5, 3, 5, 5, 3], strides=[1, 2, 2, 2, 1, 2, 1],
        expand_ratios=[1, 6, 6, 6, 6, 6, 6], hidden_dim=1280,
    )
    reference = transformers.EfficientNetModel(config).eval()
    reference.load_state_dict(to_transformers_keys(model.state_dict(), TINY), strict=True)
    captured = {}
    last_blocks = np.cumsum(TINY.stage_repeats) - 1
    for stage, block in enumerate(last_blocks):
        reference.encoder.blocks[int(block)].register_forward_hook(lambda m, i, o, stage=stage: captured.__setitem__(stage, o))
    reference.encoder.top_conv.register_forward_hook(lambda m, i, o: captured.__setitem__("head", o))
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stages, head = model.encoder.original_model(image)
        reference(pixel_values=image)
    for index, ours in enumerate(stages):
        torch.testing.assert_close(ours, captured[index], rtol=1e-5, atol=1e-5)  # see the next line
    # Tolerance: the two sum the squeeze-excite mean and the batch-norm affine in different orders.
    torch.testing.assert_close(head, captured["head"], rtol=1e-5, atol=1e-5)
    assert head.shape == (2, 1280, 2, 3) and head.abs().max() > 1.0


def test_predictions_are_unit_normals_at_the_input_resolution():
    model = random_model(seed=4)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)
    torch.testing.assert_close(out[:, :3].norm(dim=1), torch.ones(1, 64, 96))
    assert bool((out[:, 3] > 0.01).all())  # κ = elu + 1.01 > 0.01
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 48, 64))


def test_normal_to_rgb_mapping():
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.6, 0.0, -0.8]]).T.reshape(1, 3, 2, 2)
    rgb = normal_to_rgb(torch.cat([normals, torch.ones(1, 1, 2, 2)], dim=1))[0].reshape(4, 3)
    expected = torch.tensor([[0.5, 0.5, 1.0], [1.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.8, 0.5, 0.1]])
    torch.testing.assert_close(rgb, expected)


def test_maps_come_back_at_the_input_size_and_batch_like_single_frames(detector):
    batch = np.random.default_rng(0).integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)
    maps = detector(batch, resolution=64)
    assert maps.shape == (3, 45, 70, 3) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    alone = np.concatenate([detector(frame, resolution=64) for frame in batch])
    np.testing.assert_allclose(maps, alone, atol=1e-4)
    np.testing.assert_allclose(maps, detector(batch, resolution=64, batch_size=2), atol=1e-4)


def InputAsNormal() -> StandIn:
    """Stand-in network: normal = the normalised input itself (clamped), to see what goes in."""
    return StandIn(lambda image: torch.cat([image.clamp(-1, 1), torch.ones_like(image[:, :1])], dim=1))


def test_input_normalisation_and_alignment():
    stub = InputAsNormal()
    height, width = 90, 130
    image = np.zeros((height, width, 3), np.uint8)
    top, left = 30, 68
    image[top : top + 20, left : left + 14] = 255
    maps = NormalBaeDetector(stub)(image, resolution=128)[0]
    seen = stub.inputs[0]
    assert seen.shape[-2] % 64 == 0 and seen.shape[-1] % 64 == 0 and min(seen.shape[-2:]) >= 128
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(seen[0, :, 0, 0], (0 - mean) / std)  # black → (0 - mean) / std
    torch.testing.assert_close(seen[0, :, 56, 105], (1 - mean) / std)  # inside the white patch (×128/90)
    assert_box(maps[..., 0] > 0.9, top, left, 20, 14)  # red = (clamped input + 1) / 2: 1 inside the white patch


def test_wrong_garbled_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    midas = save_zeros_like(lambda: MidasDPTModel(MidasConfig(depth=4, stage_depths=(1, 1, 1))), tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    message = load_error(NormalBaeDetector.from_file, midas)
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "NormalBAE" in message and "looks like the MiDaS" in message

    state = torch.load(weights_dir / WEIGHT_FILE, map_location="cpu", weights_only=True)["model"]
    del state["module.decoder.up2._net.4.running_var"]
    state["module.decoder.out_conv_res8.weight"] = torch.zeros(4, 15, 3, 3)
    torch.save({"model": state}, tmp_path / "garbled.pt")
    message = load_error(NormalBaeDetector.from_file, tmp_path / "garbled.pt")
    assert "garbled.pt" in message and "'decoder.up2._net.4.running_var'" in message
    assert "'decoder.out_conv_res8.weight' expected [4, 16, 3, 3] found [4, 15, 3, 3]" in message

    assert_missing_file_named(NormalBaeDetector.from_folder, tmp_path, WEIGHT_FILE)
