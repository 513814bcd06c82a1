"""T2I-Adapter against diffusers (T2IAdapter, and UNet2DConditionModel's down_intrablock_additional_residuals).

Every variant (full 3- and 1-channel, light, XL) in both layouts: the diffusers layout straight from
diffusers' state dict, the original layout renamed here by the reference conversion rule
(`adapter.body.{i}.resnets.{j}` -> `body.{i·R+j}`; light `adapter.body.{i}.resnets.{j}` ->
`body.{i}.body.{j}`), independent of the pack's converter. Image sides are multiples of 64, where
diffusers' ceil-mode pooling and the host's padded pooling agree (see t2i_adapter/model.py).

Results are bit-identical: the adapter is the same sequence of convolutions, and the UNet receives
the same tensors at the same points.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import controlnet_core
from controlnet_core import ControlEntry, ControlStack, InputError, UNetLayout, load_t2i_adapter
from controlnet_core.protocol import Target
from tests.diffusers_oracle import unet_with_contribution
from tests.factories import make_diffusers_unet, make_inputs, randomize_, save_state_dict, tiny_config

# name -> (diffusers T2IAdapter kwargs, tiny UNet config it feeds)
VARIANTS = {
    "full": (dict(in_channels=3, channels=[32, 64, 64], num_res_blocks=2, downscale_factor=8,
                  adapter_type="full_adapter"), "sd1"),
    "full_gray": (dict(in_channels=1, channels=[32, 64, 64], num_res_blocks=2, downscale_factor=8,
                       adapter_type="full_adapter"), "sd1"),
    "light": (dict(in_channels=3, channels=[32, 64], num_res_blocks=4, downscale_factor=8,  # 3 levels: 32, 64, 64
                   adapter_type="light_adapter"), "sd1"),
    "xl": (dict(in_channels=3, channels=[32, 64, 96, 96], num_res_blocks=2, downscale_factor=16,
                adapter_type="full_adapter_xl"), "sdxl"),
}


def diffusers_adapter(name: str, seed: int = 3):
    from diffusers import T2IAdapter

    return randomize_(T2IAdapter(**VARIANTS[name][0]), seed).eval()


def original_layout(state: dict[str, torch.Tensor], light: bool, per_level: int) -> dict[str, torch.Tensor]:
    """The TencentARC names of a diffusers adapter state dict (the reference conversion, by hand)."""
    out = {}
    for key, value in state.items():
        key = key[len("adapter."):]
        match = re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key)
        if match:
            level, j, rest = int(match.group(1)), int(match.group(2)), match.group(3)
            key = f"body.{level}.body.{j}.{rest}" if light else f"body.{level * per_level + j}.{rest}"
        elif not light and (match := re.match(r"body\.(\d+)\.in_conv\.(.*)", key)):
            key = f"body.{int(match.group(1)) * per_level}.in_conv.{match.group(2)}"
        out[key] = value.clone()
    return out


def layout_of(unet_name: str) -> UNetLayout:
    """The tiny UNet's input blocks, read off its diffusers config by hand."""
    kwargs = tiny_config(unet_name).diffusers_kwargs
    channels, downscale, factor = [kwargs["block_out_channels"][0]], [1], 1
    levels = kwargs["block_out_channels"]
    for level, width in enumerate(levels):
        channels += [width] * kwargs["layers_per_block"]
        downscale += [factor] * kwargs["layers_per_block"]
        if level != len(levels) - 1:
            factor *= 2
            channels.append(width)
            downscale.append(factor)
    context = tiny_config(unet_name).context_dim
    return UNetLayout(tuple(channels), tuple(downscale), levels[-1], context, 2816 if unet_name == "sdxl" else None,
                      "sdxl" if unet_name == "sdxl" else "sd1", f"the tiny {unet_name} UNet")


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    name = request.param
    adapter = diffusers_adapter(name)
    state = {k: v.clone() for k, v in adapter.state_dict().items()}
    return name, adapter, state


@pytest.mark.parametrize("layout", ["diffusers", "original", "original_prefixed"])
def test_features_are_bit_identical_to_diffusers(variant, layout, tmp_path):
    name, adapter, state = variant
    kwargs = VARIANTS[name][0]
    if layout != "diffusers":
        state = original_layout(state, kwargs["adapter_type"] == "light_adapter", kwargs["num_res_blocks"])
        if layout == "original_prefixed":
            state = {f"adapter.{k}": v for k, v in state.items()}
    path = save_state_dict(state, tmp_path / f"{name}.safetensors")
    ours = load_t2i_adapter(path)
    hint = torch.rand(2, kwargs["in_channels"], 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, got = adapter(hint), ours(hint)
    assert len(got) == len(reference)
    for k, (a, b) in enumerate(zip(got, reference)):
        assert a.shape == b.shape and torch.equal(a, b), f"feature {k}"


# Where each feature goes, derived by hand from the tiny UNets: SD (3 levels of 2 blocks): after the
# last block of each level, 2, 5, 8; XL: after down block 0's downsampler (3), after the last block of
# level 1 (5) and of level 2 (8), and the fourth after the middle block.
EXPECTED_TARGETS = {"sd1": [Target.encoder(2), Target.encoder(5), Target.encoder(8)],
                    "sdxl": [Target.encoder(3), Target.encoder(5), Target.encoder(8), Target.middle()]}


def test_features_go_where_the_released_code_adds_them(variant):
    name, _, state = variant
    unet_name = VARIANTS[name][1]
    ours = load_t2i_adapter(state)
    assert ours.targets(layout_of(unet_name)) == EXPECTED_TARGETS[unet_name][:len(ours.config.channels)]


@pytest.mark.parametrize("adapter_type, family, blocks", [
    ("full_adapter", "sd1", [2, 5, 8, 11]), ("light_adapter", "sd1", [2, 5, 8, 11]),
    ("full_adapter_xl", "sdxl", [3, 5, 8, None])])
def test_released_adapters_go_after_the_blocks_the_host_uses(adapter_type, family, blocks):
    """Full-size adapters (built on the meta device) on the released UNets: SD1.x after input blocks
    2, 5, 8 and 11; SDXL after 3, 5 and 8 and the middle block (ComfyUI's adapter.py and diffusers agree)."""
    from diffusers import T2IAdapter

    from controlnet_core.t2i_adapter import T2IAdapterModel
    from controlnet_core.t2i_adapter.formats import diffusers_to_original, infer_config

    kwargs = dict(in_channels=3, channels=[320, 640, 1280, 1280] if adapter_type != "light_adapter" else
                  [320, 640, 1280], num_res_blocks=4 if adapter_type == "light_adapter" else 2,
                  downscale_factor=16 if family == "sdxl" else 8, adapter_type=adapter_type)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in T2IAdapter(**kwargs).state_dict().items()}
        config = infer_config(*diffusers_to_original(shapes))
        model = T2IAdapterModel(config)
    targets = model.targets(controlnet_core.protocol.standard_layout(family))
    assert [t.block for t in targets] == blocks


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_unet_output_matches_diffusers_adapter_path(variant, strength):
    """diffusers: UNet(down_intrablock_additional_residuals=[f · strength]) vs our stack's contribution put
    into the same UNet at its targets (tests/diffusers_oracle.py)."""
    name, adapter, state = variant
    kwargs, unet_name = VARIANTS[name]
    unet = make_diffusers_unet(unet_name, seed=4)
    inputs = make_inputs(unet_name, batch=2)
    image = torch.rand(1, inputs.x.shape[-2] * 8, inputs.x.shape[-1] * 8, kwargs["in_channels"],
                       generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        # diffusers' pipelines run the adapter on the image batch, then repeat the features for CFG.
        features = [f.repeat(2, 1, 1, 1) for f in adapter(image.movedim(-1, 1))]
        expected = unet(inputs.x, inputs.timesteps, inputs.context, added_cond_kwargs=inputs.added_cond_kwargs,
                        down_intrablock_additional_residuals=[f * strength for f in features], return_dict=False)[0]
    stack = ControlStack([ControlEntry(load_t2i_adapter(state), image, strength=strength)])
    contribution = stack.contributions(inputs.x, inputs.timesteps, inputs.context, inputs.y,
                                       layout=layout_of(unet_name))
    got = unet_with_contribution(unet, contribution, inputs.x, inputs.timesteps, inputs.context,
                                 inputs.added_cond_kwargs)
    assert torch.equal(got, expected)


def test_features_are_computed_once_per_run(variant, monkeypatch):
    name, _, state = variant
    ours = load_t2i_adapter(state)
    calls = []
    original = ours.forward
    monkeypatch.setattr(ours, "forward", lambda hint: calls.append(hint.shape) or original(hint))
    unet_name = VARIANTS[name][1]
    inputs = make_inputs(unet_name, batch=2)
    stack = ControlStack([ControlEntry(ours, torch.rand(1, 64, 64, VARIANTS[name][0]["in_channels"]))])
    for step in range(4):
        stack.contributions(inputs.x, inputs.timesteps * (1 - step / 8), inputs.context, inputs.y,
                            layout=layout_of(unet_name))
    assert len(calls) == 1


def test_hint_is_rounded_up_to_the_unshuffle_factor_like_the_host():
    """The host resizes to 8× the latent rounded up to a multiple of 8 (SD) or 16 (XL)."""
    full = load_t2i_adapter(diffusers_adapter("full").state_dict())
    xl = load_t2i_adapter(diffusers_adapter("xl").state_dict())
    assert (full.hint_spec(13, 7).height, full.hint_spec(13, 7).width) == (104, 56)
    assert (xl.hint_spec(13, 7).height, xl.hint_spec(13, 7).width) == (112, 64)  # 104 -> 112, 56 -> 64
    gray = load_t2i_adapter(diffusers_adapter("full_gray").state_dict())
    assert gray.hint_spec(8, 8).channels == 1 and gray.hint_spec(8, 8).gray == "mean"


def test_gray_adapters_take_the_plain_channel_mean():
    """1-channel adapters read (R + G + B) / 3, the host's conversion (not luma)."""
    ours = load_t2i_adapter(diffusers_adapter("full_gray").state_dict())
    image = torch.zeros(1, 64, 64, 3)
    image[..., 0] = 0.75  # pure red: mean exactly 0.25 (luma would be 0.22425)
    entry = ControlEntry(ours, image)
    prepared = entry.prepared(8, 8, torch.device("cpu"))
    with torch.no_grad():
        reference = ours(torch.full((1, 64, 64, 1), 0.25).movedim(-1, 1))  # the layout an IMAGE gives
    assert all(torch.equal(a, b) for a, b in zip(prepared, reference))


def test_odd_maps_are_pooled_with_the_hosts_padding():
    """Average pooling of a 3×3 map pads one zero row/column on each side and counts it, as the
    host's Downsample does: output 2×2, corner = (0 + 0 + 0 + x00) / 4."""
    from controlnet_core.t2i_adapter.model import average_pool_down

    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    expected = torch.tensor([[[[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, (5 + 6 + 8 + 9) / 4]]]])
    assert torch.equal(average_pool_down(x), expected)


def test_mixed_stack_with_a_controlnet_matches_diffusers_in_one_call():
    """diffusers takes ControlNet residuals and adapter features in one UNet call; so does our stack."""
    from diffusers import ControlNetModel as DiffusersControlNet

    from tests.factories import ldm_state_dict, make_diffusers_controlnet

    unet = make_diffusers_unet("sd1", seed=4)
    controlnet = make_diffusers_controlnet("sd1", seed=8)
    adapter = diffusers_adapter("full")
    inputs = make_inputs("sd1", batch=2)
    with torch.no_grad():
        down, mid = controlnet(inputs.x, inputs.timesteps, inputs.context, inputs.hint, conditioning_scale=0.8,
                               return_dict=False)
        features = adapter(inputs.hint)
        expected = unet(inputs.x, inputs.timesteps, inputs.context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid,
                        down_intrablock_additional_residuals=[f * 0.5 for f in features], return_dict=False)[0]
    ours_cn = controlnet_core.load_controlnet(ldm_state_dict(controlnet), overrides=tiny_config("sd1").overrides)
    image = inputs.hint.movedim(1, -1)
    stack = ControlStack([ControlEntry(ours_cn, image, strength=0.8),
                          ControlEntry(load_t2i_adapter(adapter.state_dict()), image, strength=0.5)])
    contribution = stack.contributions(inputs.x, inputs.timesteps, inputs.context, layout=layout_of("sd1"))
    got = unet_with_contribution(unet, contribution, inputs.x, inputs.timesteps, inputs.context)
    # ControlNet residuals go through the GEMM-free tiny path: bit-identical like the rest.
    assert torch.equal(got, expected)


def test_wrong_base_model_is_named_before_sampling():
    xl = load_t2i_adapter(diffusers_adapter("xl").state_dict())
    with pytest.raises(controlnet_core.ControlNetError, match=r"is for SDXL but .* is SD1.x"):
        xl.check_fits(controlnet_core.protocol.standard_layout("sd1"))
    from diffusers import T2IAdapter

    from controlnet_core.t2i_adapter import T2IAdapterModel
    from controlnet_core.t2i_adapter.formats import diffusers_to_original, infer_config

    with torch.device("meta"):  # a released-size SD1.5 adapter: its 1280-channel /8 feature has no SDXL block
        shapes = {k: tuple(v.shape) for k, v in T2IAdapter(adapter_type="full_adapter").state_dict().items()}
        sd15 = T2IAdapterModel(infer_config(*diffusers_to_original(shapes)))
    sdxl = controlnet_core.protocol.standard_layout("sdxl")
    with pytest.raises(controlnet_core.ControlNetError, match="feature 3 .1280 channels at latent/8. matches no input"):
        sd15.targets(sdxl)


def test_bad_hint_is_refused():
    ours = load_t2i_adapter(diffusers_adapter("full").state_dict())
    with pytest.raises(InputError, match="multiples of 8"):
        ours(torch.rand(1, 3, 60, 64))
    with pytest.raises(InputError, match="expected B×3×H×W"):
        ours(torch.rand(1, 1, 64, 64))
