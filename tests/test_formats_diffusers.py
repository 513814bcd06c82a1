"""Unit tests of the diffusers -> ldm key conversion (controlnet_core/ldm/diffusers_keys.py).

End-to-end numerical correctness of the mapping is covered by test_diffusers_parity.py; these
tests pin the rules of the diffusers layout and the error behaviour.
"""
from __future__ import annotations

import pytest
import torch

import controlnet_core
from controlnet_core.errors import CheckpointError
from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm, diffusers_unet_encoder_to_ldm, is_diffusers_layout
from tests.factories import diffusers_state_dict, make_diffusers_controlnet, make_diffusers_unet, make_inputs, tiny_config


@pytest.fixture(scope="module")
def sd1_state():
    return diffusers_state_dict(make_diffusers_controlnet("sd1", seed=0))


def test_detection(sd1_state):
    assert is_diffusers_layout(sd1_state)
    assert not is_diffusers_layout(diffusers_to_ldm(sd1_state))


def test_tensors_are_renamed_not_copied(sd1_state):
    converted = diffusers_to_ldm(sd1_state)
    assert len(converted) == len(sd1_state)
    assert {id(v) for v in converted.values()} == {id(v) for v in sd1_state.values()}


def test_rules_from_the_format_table(sd1_state):
    """L = 2 layers per level: level i's layer j is input_blocks.1+3i+j, its downsampler input_blocks.3(i+1)."""
    converted = diffusers_to_ldm(sd1_state)
    pairs = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "down_blocks.1.resnets.1.conv1.weight": "input_blocks.5.0.in_layers.2.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight": "input_blocks.1.0.emb_layers.1.weight",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight":
            "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.1.downsamplers.0.conv.weight": "input_blocks.6.0.op.weight",
        "mid_block.resnets.1.norm2.weight": "middle_block.2.out_layers.0.weight",
        "mid_block.attentions.0.proj_out.weight": "middle_block.1.proj_out.weight",
        "controlnet_down_blocks.8.weight": "zero_convs.8.0.weight",
        "controlnet_mid_block.bias": "middle_block_out.0.bias",
        "controlnet_cond_embedding.conv_in.weight": "input_hint_block.0.weight",
        "controlnet_cond_embedding.blocks.5.weight": "input_hint_block.12.weight",
        "controlnet_cond_embedding.conv_out.weight": "input_hint_block.14.weight",
    }
    for diffusers_key, ldm_key in pairs.items():
        assert converted[ldm_key] is sd1_state[diffusers_key], (diffusers_key, ldm_key)


def test_sdxl_add_embedding_becomes_label_emb():
    state = diffusers_state_dict(make_diffusers_controlnet("sdxl", seed=0))
    converted = diffusers_to_ldm(state)
    assert converted["label_emb.0.0.weight"] is state["add_embedding.linear_1.weight"]
    assert converted["label_emb.0.2.bias"] is state["add_embedding.linear_2.bias"]


def test_unknown_keys_are_named(sd1_state):
    state = dict(sd1_state)
    state["encoder_hid_proj.weight"] = torch.zeros(2, 2)
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.scale"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        diffusers_to_ldm(state)
    assert "encoder_hid_proj.weight" in str(error.value)
    assert "attn1.processor.scale" in str(error.value)


def test_not_a_diffusers_controlnet_is_refused(sd1_state):
    with pytest.raises(CheckpointError, match="controlnet_cond_embedding.conv_in.weight"):
        diffusers_to_ldm(diffusers_to_ldm(sd1_state))


def test_unet_encoder_drops_decoder_and_matches_controlnet_names():
    unet_state = diffusers_state_dict(make_diffusers_unet("sdxl", seed=0))
    encoder = diffusers_unet_encoder_to_ldm(unet_state)
    assert not any(k.startswith(("output_blocks", "out.", "up_blocks", "conv_out", "conv_norm_out")) for k in encoder)
    control = diffusers_to_ldm(diffusers_state_dict(make_diffusers_controlnet("sdxl", seed=0)))
    control_encoder = {k for k in control if not k.startswith(("zero_convs.", "middle_block_out.", "input_hint_block."))}
    assert set(encoder) == control_encoder
    for key, value in encoder.items():
        assert value.shape == control[key].shape, key


def test_unet_encoder_refuses_a_controlnet():
    state = diffusers_state_dict(make_diffusers_controlnet("sd1", seed=0))
    with pytest.raises(CheckpointError, match="ControlNet keys"):
        diffusers_unet_encoder_to_ldm(state)


def test_layers_per_block_is_read_from_the_keys():
    """A 1-layer-per-level ControlNet converts (indices shift) and matches diffusers numerically."""
    from diffusers import ControlNetModel

    from tests.factories import randomize_

    kwargs = dict(tiny_config("sd1").diffusers_kwargs, layers_per_block=1)
    model = randomize_(ControlNetModel(**kwargs), seed=7).eval()
    state = diffusers_state_dict(model)
    converted = diffusers_to_ldm(state)
    assert converted["input_blocks.2.0.op.weight"] is state["down_blocks.0.downsamplers.0.conv.weight"]
    assert converted["input_blocks.3.0.in_layers.2.weight"] is state["down_blocks.1.resnets.0.conv1.weight"]

    ours = controlnet_core.load_controlnet(state, overrides=tiny_config("sd1").overrides)
    inputs = make_inputs("sd1", seed=8)
    with torch.no_grad():
        down, mid = model(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
        residuals = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
    assert len(residuals.down) == len(down) == 6
    for a, b in zip(residuals.down + [residuals.mid], list(down) + [mid]):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
