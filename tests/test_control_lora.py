"""Control-LoRA against diffusers: `ControlNetModel.from_unet(base)` with W + up·down merged by hand.

The file is written here in Stability's layout (original ldm names, `lora_controlnet` marker,
`<module>.up` / `<module>.down` for every ≥2-D weight of the UNet copy, 1-D tensors and the
ControlNet's own parts in full). The oracle is diffusers' ControlNet copied from the same base UNet,
whose weights get `up.flatten(1) @ down.flatten(1)` added in this test (diffusers' own loader needs
peft; the merge is the formula Stability's files are made for, with no scale).

Which base weights count: the ones given. A "LoRA applied to the model" (a changed UNet weight)
changes the ControlNet, and the pack's result is the oracle built from the changed UNet.
"""
from __future__ import annotations

import copy

import pytest
import torch

from controlnet_core import ControlNetError, identify, load_control
from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm, diffusers_unet_encoder_to_ldm
from tests.factories import diffusers_state_dict, make_diffusers_unet, make_inputs, save_state_dict, \
    tiny_config

UNET_PARTS = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")
CONTROLNET_PARTS = ("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block")


def control_lora_and_oracle(name: str, rank: int = 4, seed: int = 0):
    """(Control-LoRA state dict, base UNet, build(unet) -> the diffusers ControlNet it makes from `unet`)."""
    from diffusers import ControlNetModel

    unet = make_diffusers_unet(name, seed=1)
    generator = torch.Generator().manual_seed(seed)
    template = ControlNetModel.from_unet(unet)
    trained = {}  # what training changed in full: the ControlNet's own parts and every 1-D tensor
    for key, parameter in template.named_parameters():
        if key.startswith(CONTROLNET_PARTS) or parameter.ndim == 1:
            gain = 1.0 if "norm" in key and key.endswith("weight") else 0.0
            trained[key] = gain + 0.1 * torch.randn(parameter.shape, generator=generator)
            with torch.no_grad():
                parameter.copy_(trained[key])
    diffusers_tensors = diffusers_state_dict(template)
    ldm = diffusers_to_ldm(diffusers_tensors)  # renames only: the same tensor objects
    diffusers_key = {id(tensor): key for key, tensor in diffusers_tensors.items()}
    state, deltas = {"lora_controlnet": torch.zeros(1)}, {}
    for key, tensor in ldm.items():
        if key.startswith(UNET_PARTS) and tensor.ndim >= 2:
            module, r = key[:-len(".weight")], min(rank, tensor.shape[0], tensor[0].numel())
            up = 0.1 * torch.randn(tensor.shape[0], r, *([1] * (tensor.ndim - 2)), generator=generator)
            down = 0.1 * torch.randn(r, *tensor.shape[1:], generator=generator)
            state[module + ".up"], state[module + ".down"] = up, down
            deltas[diffusers_key[id(tensor)]] = (up.flatten(1) @ down.flatten(1)).reshape(tensor.shape)
        else:
            state[key] = tensor

    def build(base_unet):
        controlnet = ControlNetModel.from_unet(base_unet)
        with torch.no_grad():
            for key, parameter in controlnet.named_parameters():
                if key in trained:
                    parameter.copy_(trained[key])
                elif key in deltas:
                    parameter.add_(deltas[key])
        return controlnet.eval()

    return state, unet, build


def ldm_base(unet) -> dict[str, torch.Tensor]:
    """The base UNet as a checkpoint holds it (ldm names under model.diffusion_model.)."""
    return {f"model.diffusion_model.{k}": v for k, v in diffusers_unet_encoder_to_ldm(diffusers_state_dict(unet)).items()}


def assert_same_residuals(model, oracle, inputs):
    with torch.no_grad():
        down, mid = oracle(inputs.x, inputs.timesteps, inputs.context, inputs.hint,
                           added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)
        ours = model.control(inputs.x, inputs.hint, inputs.timesteps, inputs.context, inputs.y)
    assert len(ours.down) == len(down)
    for index, (a, b) in enumerate(zip(ours.down + [ours.mid], list(down) + [mid])):
        assert torch.equal(a, b), f"residual {index}: max error {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_residuals_match_diffusers_from_unet_plus_up_down(name, tmp_path):
    state, unet, build = control_lora_and_oracle(name)
    path = save_state_dict(state, tmp_path / f"control-lora-canny-rank4-{name}.safetensors")
    identity = identify(path)
    assert (identity.system, identity.variant, identity.family, identity.runs_here) == (
        "Control-LoRA", "rank 4", name, True)
    overrides = {"num_heads": 8} if name == "sd1" else {"num_head_channels": 8}  # tiny widths: see factories
    from controlnet_core.control_lora import load_control_lora

    model = load_control_lora(path, base_unet=ldm_base(unet), overrides=overrides)
    assert model.system == "Control-LoRA" and len(model.slots) == tiny_config(name).num_down_residuals + 1
    assert_same_residuals(model, build(unet), make_inputs(name))


def test_the_base_weights_given_are_the_ones_used():
    """A LoRA on the model changes its UNet weights, and so the ControlNet built from it."""
    state, unet, build = control_lora_and_oracle("sd1", seed=2)
    patched = copy.deepcopy(unet)
    with torch.no_grad():  # a rank-1 "LoRA" on one attention projection and one conv of the encoder
        block = patched.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
        block.weight += 0.05 * torch.outer(torch.linspace(-1, 1, block.weight.shape[0]),
                                           torch.linspace(1, -1, block.weight.shape[1]))
        patched.down_blocks[0].resnets[0].conv1.weight.mul_(1.1)
    from controlnet_core.control_lora import load_control_lora

    model = load_control_lora(state, overrides={"num_heads": 8})
    inputs = make_inputs("sd1")
    with pytest.raises(ControlNetError, match="has no base UNet yet"):
        model.prepare(inputs.hint)
    model.use_base_unet(ldm_base(unet))
    assert_same_residuals(model, build(unet), inputs)
    before = model.control(inputs.x, inputs.hint, inputs.timesteps, inputs.context).mid
    model.use_base_unet(diffusers_state_dict(patched))  # diffusers names work too
    assert_same_residuals(model, build(patched), inputs)
    assert not torch.allclose(model.control(inputs.x, inputs.hint, inputs.timesteps, inputs.context).mid, before)
    built = model.control
    model.use_base_unet(diffusers_state_dict(patched))  # new tensors: rebuilt
    assert model.control is not built
    same = patched.state_dict()
    model.use_base_unet(same)
    built = model.control
    model.use_base_unet(patched.state_dict())  # the same storage, unedited: kept (a run starts once per cond entry)
    assert model.control is built
    with torch.no_grad():
        same["down_blocks.0.resnets.0.conv1.weight"].mul_(1.0)  # edited in place: rebuilt
    model.use_base_unet(same)
    assert model.control is not built
    model.use_base_unet(None)
    with pytest.raises(ControlNetError, match="has no base UNet yet"):
        model.control


def test_merged_weights_share_nothing_with_the_base_and_unchanged_ones_are_the_bases():
    state, unet, _ = control_lora_and_oracle("sd1")
    base = ldm_base(unet)
    model = load_control(state, base_unet=base)
    control = model.control.state_dict()
    key = "input_blocks.1.0.in_layers.2.weight"
    assert control[key].data_ptr() != base["model.diffusion_model." + key].data_ptr()
    assert torch.equal(control[key], base["model.diffusion_model." + key] + (
        state[key[:-7] + ".up"].flatten(1) @ state[key[:-7] + ".down"].flatten(1)).reshape(control[key].shape))
    assert torch.equal(control["zero_convs.0.0.weight"], state["zero_convs.0.0.weight"])
    assert sum(1 for k in state if k.endswith(".up")) > 50


def test_a_base_of_another_family_is_refused_naming_both():
    state, _, _ = control_lora_and_oracle("sd1")
    other = ldm_base(make_diffusers_unet("sdxl", seed=1))
    from controlnet_core.control_lora import load_control_lora

    model = load_control_lora(state, overrides={"num_heads": 8})
    with pytest.raises(ControlNetError, match="cannot be built from the base model: .* weights do not match"):
        model.use_base_unet(other)
