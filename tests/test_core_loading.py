"""Loading: safe file reading, layout detection, meta-device construction, dtypes, refusals."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import controlnet_core
from controlnet_core import CheckpointError, InputError, load_controlnet
from controlnet_core.controlnet.config import ControlNetConfig
from tests.factories import (
    make_diffusers_controlnet, make_diffusers_unet, make_inputs, ldm_state_dict, diffusers_state_dict, save_state_dict,
    tiny_config, with_prefix,
)


@pytest.fixture(scope="module")
def sd1_controlnet():
    return make_diffusers_controlnet("sd1", seed=3)


@pytest.fixture(scope="module")
def sd1_ldm(sd1_controlnet):
    return ldm_state_dict(sd1_controlnet)


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl"])
def test_config_inferred_from_shapes(name):
    cfg = tiny_config(name)
    kwargs = cfg.diffusers_kwargs
    model = load_controlnet(ldm_state_dict(make_diffusers_controlnet(name)), overrides=cfg.overrides)
    c = model.config
    assert c.family == cfg.expected_family
    assert c.model_channels == kwargs["block_out_channels"][0]
    assert list(c.channel_mult) == [ch // kwargs["block_out_channels"][0] for ch in kwargs["block_out_channels"]]
    assert c.num_res_blocks == (kwargs["layers_per_block"],) * len(kwargs["block_out_channels"])
    assert c.context_dim == cfg.context_dim
    assert c.use_linear_projection == kwargs["use_linear_projection"]
    assert (c.adm_in_channels is not None) == cfg.uses_adm
    per_level = kwargs.get("transformer_layers_per_block", (1,) * len(kwargs["block_out_channels"]))
    expected_depth = [per_level[level] if "CrossAttn" in kwargs["down_block_types"][level] else 0
                      for level in range(len(per_level)) for _ in range(kwargs["layers_per_block"])]
    assert list(c.transformer_depth) == expected_depth
    assert c.transformer_depth_middle == per_level[-1]


def test_family_head_convention_and_override():
    # Real widths: SD1.x → 8 heads, SD2.x/SDXL → 64 channels per head; overrides replace either.
    base = ControlNetConfig(model_channels=320)
    assert base.heads_for(640) == (8, 80)
    sd2 = base.replace(family="sd2", num_head_channels=64)
    assert sd2.num_heads is None and sd2.heads_for(640) == (10, 64)


def test_keeps_file_dtype_and_casts_on_request(tmp_path, sd1_ldm):
    path = save_state_dict({k: v.half() for k, v in sd1_ldm.items()}, tmp_path / "cn_fp16.safetensors")
    assert load_controlnet(path).dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in load_controlnet(path).parameters())
    assert load_controlnet(path, dtype=torch.float32).dtype == torch.float32
    path_bf16 = save_state_dict({k: v.bfloat16() for k, v in sd1_ldm.items()}, tmp_path / "cn_bf16.safetensors")
    assert controlnet_core.identify(path_bf16).details["dtype"] == "bfloat16"


def test_loading_never_random_initialises(monkeypatch, sd1_ldm):
    # Modules are built on the meta device: init may run there (it allocates nothing), never on real memory.
    real_inits = []
    for cls in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
        original = cls.reset_parameters

        def checked(self, _original=original):
            if not self.weight.is_meta:
                real_inits.append(type(self).__name__)
            return _original(self)

        monkeypatch.setattr(cls, "reset_parameters", checked)
    model = load_controlnet(sd1_ldm)
    assert real_inits == []
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.zero_convs[0][0].weight, sd1_ldm["zero_convs.0.0.weight"])


def test_loading_shares_memory_with_the_state_dict(sd1_ldm):
    # Same dtype and device: tensors are assigned, not copied.
    model = load_controlnet(sd1_ldm)
    assert model.input_blocks[0][0].weight.data_ptr() == sd1_ldm["input_blocks.0.0.weight"].data_ptr()


def test_training_checkpoint_pth_wrapped_in_state_dict(tmp_path, sd1_controlnet, sd1_ldm):
    state = with_prefix(sd1_ldm, "control_model.")
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 3, 3)
    state["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 8, 3, 3)
    path = save_state_dict(state, tmp_path / "train.ckpt", wrap_in="state_dict")
    model = load_controlnet(path)
    assert torch.equal(model.middle_block_out[0].weight, sd1_ldm["middle_block_out.0.weight"])
    assert "full training checkpoint" in controlnet_core.identify(path).layout


def test_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"zero_convs.0.0.weight": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        load_controlnet(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_corrupt_files(tmp_path, sd1_ldm):
    good = save_state_dict(sd1_ldm, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_controlnet(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a model at all" * 100)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_controlnet(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_controlnet(empty)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_controlnet(tmp_path / "missing.safetensors")


def test_state_dict_with_missing_or_reshaped_tensors(sd1_ldm):
    partial = {k: v for k, v in sd1_ldm.items() if not k.startswith("zero_convs.3.")}
    with pytest.raises(CheckpointError, match="missing tensors.*zero_convs.3.0"):
        load_controlnet(partial)
    reshaped = dict(sd1_ldm)
    reshaped["middle_block_out.0.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match="wrong shape.*middle_block_out.0.bias"):
        load_controlnet(reshaped)


@pytest.mark.parametrize("keys, what", [
    ({"weight": torch.zeros(2)}, "unknown layout"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "Stable Diffusion model checkpoint"),
    ({"mid_convs.1.weight": torch.zeros(320, 256, 1, 1), "embedding.0.weight": torch.zeros(64, 3, 3, 3)},
     "is a ControlNeXt .*, not a ControlNet; load it with controlnet_core.load_control"),
    ({"lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.down.0.weight": torch.zeros(2)},
     "is a LLLite .*, not a ControlNet; this pack does not run it"),
])
def test_unknown_and_unsupported_layouts_are_named(keys, what):
    with pytest.raises(CheckpointError, match=what):
        load_controlnet(keys)


def test_diff_controlnet_needs_and_uses_the_base_unet(sd1_ldm):
    unet = make_diffusers_unet("sd1", seed=9)
    from controlnet_core.ldm.diffusers_keys import diffusers_unet_encoder_to_ldm

    base = diffusers_unet_encoder_to_ldm(diffusers_state_dict(unet))
    delta = {k: (v - base[k]) if k in base else v for k, v in sd1_ldm.items()}
    delta["difference"] = torch.tensor([])
    with pytest.raises(CheckpointError, match="diff.*base"):
        load_controlnet(delta)
    model = load_controlnet(delta, base_unet=with_prefix(base, "model.diffusion_model."))
    reference = load_controlnet(sd1_ldm)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_sdxl_controlnet_refuses_sd15_inputs():
    cfg = tiny_config("sdxl")
    model = load_controlnet(ldm_state_dict(make_diffusers_controlnet("sdxl")), overrides=cfg.overrides)
    sd1_inputs = make_inputs("sd1")
    with pytest.raises(InputError, match="context dim 2048.*different families"):
        model(sd1_inputs.x, sd1_inputs.hint, sd1_inputs.timesteps, sd1_inputs.context)
    sdxl_inputs = make_inputs("sdxl")
    with pytest.raises(InputError, match="needs the pooled"):
        model(sdxl_inputs.x, sdxl_inputs.hint, sdxl_inputs.timesteps, sdxl_inputs.context, None)
    with pytest.raises(InputError, match="latent"):
        model(sdxl_inputs.x[:, :3], sdxl_inputs.hint, sdxl_inputs.timesteps, sdxl_inputs.context, sdxl_inputs.y)


def test_identify_and_inspect_cli(tmp_path, sd1_ldm):
    path = save_state_dict(with_prefix({k: v.half() for k, v in sd1_ldm.items()}, "control_model."),
                           tmp_path / "cn.safetensors")
    info = controlnet_core.identify(path)
    assert (info.system, info.family, info.layout) == ("ControlNet", "sd1", "ldm (control_model. prefix)")
    assert info.details["hint channels"] == 3 and info.details["dtype"] == "float16"
    assert info.details["residuals"].startswith(f"{tiny_config('sd1').num_down_residuals} skips + 1 middle")
    assert info.details["parameters"] == sum(v.numel() for v in sd1_ldm.values())
    assert info.details["skips"].split(", ")[0] == "32@64"
    out = subprocess.run([sys.executable, "-m", "controlnet_core", "inspect", str(path)], capture_output=True,
                         text=True, cwd=Path(controlnet_core.__file__).parent.parent, check=True).stdout
    assert out.splitlines()[0] == "ControlNet" and "base model: SD1.x" in out
    assert f"{info.details['parameters']:,}" in out
    bad = subprocess.run([sys.executable, "-m", "controlnet_core", "inspect", str(tmp_path / "nope.safetensors")],
                         capture_output=True, text=True, cwd=Path(controlnet_core.__file__).parent.parent)
    assert bad.returncode == 1 and "nope.safetensors" in bad.stderr
