"""Every structure diffusers' ControlNetModel can express loads here and gives its residuals bit for bit.

Each case builds a diffusers ControlNetModel with all parameters random (tests.factories.randomize_),
writes it in the diffusers and in the original (ldm) layout, loads both with no config overrides
beyond the head width the tiny channel counts need, and compares every residual with diffusers'
own forward. Batches are 2 (see test_diffusers_parity.py: linear-projection transformers are
bit-identical to diffusers only from batch 2).

- transformer levels of depth 0: diffusers still builds a Transformer2DModel there (GroupNorm,
  proj_in, proj_out, no blocks), which is not the identity; SDXL's "mid" (0, 0, 1) and "small"
  (0, 0, 0, middle shell too) ControlNets are built that way;
- 1-channel hints; hint encoders with other stage widths (diffusers' default (48, 96, 192, 384)) or
  another number of stages (three stages: the hint is 4× the latent);
- SD2.x head counts (64 channels per head at the real widths); SDXL transformer depths 1, 2 and 10;
- a middle block without attention (mid_block_type "UNetMidBlock2D").
"""
from __future__ import annotations

import pytest
import torch

import controlnet_core
from tests.factories import (SDXL_ADM_DIM, SDXL_TIME_ID_DIM, diffusers_state_dict, ldm_state_dict, make_inputs,
                             randomize_)
from tests.test_diffusers_parity import assert_residuals_match

SDXL_BASE = dict(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 attention_head_dim=(4, 8, 8), use_linear_projection=True, norm_num_groups=32,
                 addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_ID_DIM,
                 projection_class_embeddings_input_dim=SDXL_ADM_DIM)
SD1_BASE = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), use_linear_projection=False,
                norm_num_groups=32)

# name -> (diffusers kwargs, family for the inputs, config overrides, what our config must say)
CASES = {
    "sdxl mid (0, 0, 1)": (dict(SDXL_BASE, transformer_layers_per_block=(0, 0, 1)), "sdxl",
                           {"num_head_channels": 8}, {"transformer_depth": (-1, -1, 0, 0, 1, 1),
                                                      "transformer_depth_middle": 1}),
    "sdxl small (0, 0, 0)": (dict(SDXL_BASE, transformer_layers_per_block=(0, 0, 0)), "sdxl",
                             {"num_head_channels": 8}, {"transformer_depth": (-1, -1, 0, 0, 0, 0),
                                                        "transformer_depth_middle": 0}),
    "sdxl depths 1, 2, 10": (dict(SDXL_BASE, down_block_types=("CrossAttnDownBlock2D",) * 3,
                                  transformer_layers_per_block=(1, 2, 10)), "sdxl", {"num_head_channels": 8},
                             {"transformer_depth": (1, 1, 2, 2, 10, 10), "transformer_depth_middle": 10}),
    "sd1 level of depth 0": (dict(SD1_BASE, transformer_layers_per_block=(0, 1)), "sd1", {},
                             {"transformer_depth": (0, -1), "transformer_depth_middle": 1}),
    "1-channel hint": (dict(SD1_BASE, conditioning_channels=1), "sd1", {}, {"hint_channels": 1}),
    "hint stages (48, 96, 192, 384)": (dict(SD1_BASE, conditioning_embedding_out_channels=(48, 96, 192, 384)), "sd1",
                                       {}, {"hint_block_channels": (48, 96, 192, 384)}),
    "three hint stages (4x hint)": (dict(SD1_BASE, conditioning_embedding_out_channels=(16, 32, 64)), "sd1", {},
                                    {"hint_block_channels": (16, 32, 64)}),
    "middle without attention": (dict(SD1_BASE, mid_block_type="UNetMidBlock2D"), "sd1", {},
                                 {"transformer_depth_middle": -1}),
    # The real SD2.x widths of the first two levels, 64 channels per head (5 and 10 heads): no overrides.
    "sd2 head counts": (dict(block_out_channels=(320, 640), layers_per_block=1, cross_attention_dim=1024,
                             attention_head_dim=(5, 10), use_linear_projection=True,
                             down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")), "sd2", {},
                        {"num_head_channels": 64, "num_heads": None}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_structure_loads_and_matches_diffusers(case, layout):
    from diffusers import ControlNetModel

    kwargs, family, overrides, expected = CASES[case]
    model = randomize_(ControlNetModel(**kwargs), 17).eval()
    state = diffusers_state_dict(model) if layout == "diffusers" else ldm_state_dict(model)
    ours = controlnet_core.load_controlnet(state, overrides=overrides)
    for field, value in expected.items():
        assert getattr(ours.config, field) == value, field
    stages = kwargs.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
    hint_scale = 2 ** (len(stages) - 1)
    inputs = make_inputs(family, batch=2, latent_size=4 if "sd2" in case else 8)
    hint = torch.rand(2, kwargs.get("conditioning_channels", 3), inputs.x.shape[-2] * hint_scale,
                      inputs.x.shape[-1] * hint_scale, generator=torch.Generator().manual_seed(5))
    assert ours.hint_spec(*inputs.x.shape[-2:]).height == hint.shape[-2]
    with torch.no_grad():
        down, mid = model(inputs.x, inputs.timesteps, inputs.context, hint, added_cond_kwargs=inputs.added_cond_kwargs,
                          return_dict=False)
        residuals = ours(inputs.x, hint, inputs.timesteps, inputs.context, inputs.y)
    assert_residuals_match(residuals, list(down), mid)


def test_depth_zero_shell_is_not_the_identity():
    """Guard: the depth-0 transformer shell changes the residuals (dropping it, as a loader that reads
    depth 0 as "no transformer" does, would give other numbers)."""
    from diffusers import ControlNetModel

    model = randomize_(ControlNetModel(**dict(SDXL_BASE, transformer_layers_per_block=(0, 0, 1))), 17).eval()
    ours = controlnet_core.load_controlnet(diffusers_state_dict(model), overrides={"num_head_channels": 8})
    inputs = make_inputs("sdxl", batch=2)
    with torch.no_grad():
        before = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context, inputs.y).mid
        shell = ours.input_blocks[4][1]
        shell.proj_out.weight.mul_(2.0)
        after = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context, inputs.y).mid
    assert len(shell.transformer_blocks) == 0
    assert not torch.allclose(before, after)
