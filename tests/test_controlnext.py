"""ControlNeXt against the released code, rebuilt here from the same diffusers blocks it uses.

diffusers has no ControlNeXt class. The released modules (dvlab-research/ControlNeXt,
ControlNeXt-SDXL/models/controlnet.py and ControlNeXt-SD1.5/models/controlnet.py) are small stacks
of diffusers' own ResnetBlock2D, Downsample2D, Timesteps and TimestepEmbedding; `ReferenceModuleA/B`
below rebuild them from those blocks with the released names, independent of the pack's model. The
injection is checked on a stock diffusers UNet2DConditionModel with hooks that apply the released
formula at the released place, written out in this file:

- SDXL: after conv_in, c = cross_norm(c) then pool, sample + c · scale (skip untouched);
- new SD1.5: after down block 0, pool then cross_norm, sample + c · scale;
- old SD1.5: after the mid block, pool then cross_norm, sample + c · learned scale;
cross_norm(c) = (c − mean c) · std(h) / (std c + 1e-12) + mean h, per sample over (C, H, W),
unbiased std. Results are bit-identical: the same operations in the same order.
"""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import controlnet_core
from controlnet_core import CheckpointError, ControlEntry, ControlNetError, ControlStack, InputError, load_controlnext
from controlnet_core.controlnext import ControlNeXtModel, cross_normalize, load_unet_subset
from controlnet_core.controlnext.config import MODULE_A_CONFIG, MODULE_B_CONFIG, SD15, SD15_OLD, SDXL
from tests.diffusers_oracle import unet_with_contribution
from tests.factories import make_diffusers_unet, make_inputs, randomize_, save_state_dict
from tests.test_t2i_adapter import layout_of


class ReferenceModuleA(nn.Module):
    """ControlNeXt-SDXL's ControlNetModel (and ControlNeXt-SD1.5-Training's ControlNeXtModel)."""

    def __init__(self, final_out_channels: int = 320, scale: float = 1.0) -> None:
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D

        super().__init__()
        self.time_proj = Timesteps(128, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(128, 256)
        self.embedding = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.GroupNorm(2, 128), nn.ReLU())
        self.down_res = nn.ModuleList([ResnetBlock2D(in_channels=128, out_channels=128, temb_channels=256, groups=4),
                                       ResnetBlock2D(in_channels=128, out_channels=256, temb_channels=256, groups=8)])
        self.down_sample = nn.ModuleList([Downsample2D(c, use_conv=True, out_channels=c, padding=1, name="op")
                                          for c in (128, 256)])
        self.mid_convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.GroupNorm(8, 256),
                          nn.Conv2d(256, 256, 3, padding=1), nn.GroupNorm(8, 256)),
            nn.Conv2d(256, final_out_channels, 1)])
        self.scale = scale

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> dict:
        emb = self.time_embedding(self.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype))
        sample = self.embedding(sample)
        for res, down in zip(self.down_res, self.down_sample):
            sample = down(res(sample, emb))
        sample = self.mid_convs[0](sample) + sample
        return {"out": self.mid_convs[1](sample), "scale": self.scale}


class ReferenceModuleB(nn.Module):
    """ControlNeXt-SD1.5's (old inference) ControlNetModel: learned `scale` in the file."""

    def __init__(self, final_out_channels: int = 1280) -> None:
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D

        super().__init__()
        self.time_proj = Timesteps(128, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(128, 256)
        self.down_res = nn.ModuleList([ResnetBlock2D(in_channels=i, out_channels=o, temb_channels=256, groups=g)
                                       for i, o, g in ((3, 128, 1), (128, 256, 8), (256, 256, 8))])
        self.down_sample = nn.ModuleList([Downsample2D(c, use_conv=True, out_channels=c, padding=1, name="op")
                                          for c in (128, 256, 256)])
        self.mid_convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1)),
            nn.Conv2d(256, final_out_channels, 1)])
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> dict:
        emb = self.time_embedding(self.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype))
        for res, down in zip(self.down_res, self.down_sample):
            sample = down(res(sample, emb))
        for mid_conv in self.mid_convs:
            sample = mid_conv(sample)
        return {"out": sample, "scale": self.scale}


def reference_cross_norm(control: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    mean_latents, std_latents = torch.mean(sample, dim=(1, 2, 3), keepdim=True), torch.std(sample, dim=(1, 2, 3),
                                                                                           keepdim=True)
    mean_control, std_control = torch.mean(control, dim=(1, 2, 3), keepdim=True), torch.std(control, dim=(1, 2, 3),
                                                                                             keepdim=True)
    return (control - mean_control) * (std_latents / (std_control + 1e-12)) + mean_latents


def reference_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    randomize_(module, seed)
    if isinstance(getattr(module, "scale", None), nn.Parameter):
        with torch.no_grad():
            module.scale.fill_(0.7)  # a learned value, not 1
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- the released key layout (from the released code) ----------------------------------------------------

def test_released_key_layouts():
    a = {k: tuple(v.shape) for k, v in ReferenceModuleA().state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ReferenceModuleB().state_dict().items()}
    assert len(a) == 52 and len(b) == 51
    assert a["time_embedding.linear_1.weight"] == (256, 128) and a["embedding.0.weight"] == (64, 3, 3, 3)
    assert a["embedding.7.weight"] == (128,) and a["down_res.1.conv_shortcut.weight"] == (256, 128, 1, 1)
    assert a["down_sample.1.conv.weight"] == (256, 256, 3, 3) and a["mid_convs.1.weight"] == (320, 256, 1, 1)
    assert b["scale"] == () and b["down_res.0.norm1.weight"] == (3,) and b["mid_convs.1.weight"] == (1280, 256, 1, 1)
    assert "embedding.0.weight" not in b and "down_res.2.conv1.weight" in b
    ours_a = {k: tuple(v.shape) for k, v in ControlNeXtModel(MODULE_A_CONFIG, device="meta").state_dict().items()}
    ours_b = {k: tuple(v.shape) for k, v in ControlNeXtModel(MODULE_B_CONFIG, device="meta").state_dict().items()}
    assert ours_a == a and ours_b == b


@pytest.mark.parametrize("module, suffix", [("A", ".safetensors"), ("B", ".safetensors"), ("A", ".bin")])
def test_released_modules_load_and_match_the_reference(module, suffix, tmp_path):
    reference = ReferenceModuleA() if module == "A" else ReferenceModuleB()
    state = reference_state(reference, seed=2)
    path = save_state_dict(state, tmp_path / f"controlnet{suffix}")
    ours = load_controlnext(path, variant=SDXL if module == "A" else None)
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([999.0, 421.0])
    with torch.no_grad():
        expected = reference(image, timesteps)["out"]
        got = ours(image, timesteps)
    assert got.shape == expected.shape == (2, 320 if module == "A" else 1280, 8, 8)  # latent size
    assert torch.equal(got, expected)
    if module == "B":
        assert ours.scale.item() == pytest.approx(0.7)


def test_cross_normalisation_by_hand():
    """c = [1, 2, 3, 4], h = [2, 4, 6, 8]: mean(c) 2.5, mean(h) 5, unbiased std(c) = sqrt(5/3),
    std(h) = sqrt(20/3), so std(h)/std(c) = 2 and c' = (c − 2.5)·2 + 5 = h."""
    control = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 1, 2, 2)
    hidden = torch.tensor([2.0, 4.0, 6.0, 8.0], dtype=torch.float64).view(1, 1, 2, 2)
    assert statistics.stdev([2, 4, 6, 8]) / statistics.stdev([1, 2, 3, 4]) == pytest.approx(2.0)
    torch.testing.assert_close(cross_normalize(control, hidden), hidden, rtol=0, atol=1e-11)  # eps 1e-12
    # Per sample: a second sample is normalised with its own statistics.
    two = cross_normalize(torch.cat([control, control * 10]), torch.cat([hidden, hidden - 5]))
    mean = [statistics.mean([2, 4, 6, 8]) - 5, statistics.stdev([2, 4, 6, 8])]
    assert two[1].mean().item() == pytest.approx(mean[0]) and two[1].std().item() == pytest.approx(mean[1])


# ---- injection into a stock diffusers UNet ----------------------------------------------------------

def _reference_unet_output(variant, unet, reference, image, inputs, strength):
    """The released injection, by hooks on the stock UNet (see the module docstring)."""
    handles = []
    controls = reference(image, inputs.timesteps)
    scale = controls["scale"] * strength if variant != SD15_OLD else controls["scale"]

    def sdxl(module, args, kwargs):
        sample = kwargs["hidden_states"]
        c = reference_cross_norm(controls["out"].to(sample), sample)
        c = F.adaptive_avg_pool2d(c, sample.shape[-2:])
        return args, {**kwargs, "hidden_states": sample + c * scale}

    def sd15(module, args, output):
        sample, res_samples = output
        c = F.adaptive_avg_pool2d(controls["out"], sample.shape[-2:]).to(sample)
        return sample + reference_cross_norm(c, sample) * scale, res_samples

    def sd15_old(module, args, sample):
        c = F.adaptive_avg_pool2d(controls["out"], sample.shape[-2:]).to(sample)
        # The release applies its learned scale alone; the pack's strength multiplies on top (1 = as released).
        return sample + reference_cross_norm(c, sample) * scale * strength

    if variant == SDXL:
        handles.append(unet.down_blocks[0].register_forward_pre_hook(sdxl, with_kwargs=True))
    elif variant == SD15:
        handles.append(unet.down_blocks[0].register_forward_hook(sd15))
    else:
        handles.append(unet.mid_block.register_forward_hook(sd15_old))
    try:
        with torch.no_grad():
            return unet(inputs.x, inputs.timesteps, inputs.context, added_cond_kwargs=inputs.added_cond_kwargs,
                        return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()


# variant -> (tiny UNet, the channels at the injection point: conv_in 32, down block 0 out 32, mid 64)
INJECTION = {SDXL: ("sdxl", 32), SD15: ("sd1", 32), SD15_OLD: ("sd1", 64)}


@pytest.mark.parametrize("variant", [SDXL, SD15, SD15_OLD])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_unet_output_matches_the_released_injection(variant, strength):
    unet_name, channels = INJECTION[variant]
    reference = ReferenceModuleB(channels) if variant == SD15_OLD else ReferenceModuleA(channels)
    state = reference_state(reference, seed=5)
    config = MODULE_B_CONFIG if variant == SD15_OLD else MODULE_A_CONFIG
    ours = ControlNeXtModel(type(config)(**{**config.__dict__, "final_out_channels": channels}))
    ours.load_state_dict(state)
    ours.eval()
    unet = make_diffusers_unet(unet_name, seed=4)
    inputs = make_inputs(unet_name, batch=2)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
    expected = _reference_unet_output(variant, unet, reference, image.movedim(-1, 1).expand(2, -1, -1, -1), inputs,
                                      strength)
    stack = ControlStack([ControlEntry(ours, image, strength=strength)])
    contribution = stack.contributions(inputs.x, inputs.timesteps, inputs.context, inputs.y,
                                       layout=layout_of(unet_name))
    got = unet_with_contribution(unet, contribution, inputs.x, inputs.timesteps, inputs.context,
                                 inputs.added_cond_kwargs)
    plain = unet_with_contribution(unet, None, inputs.x, inputs.timesteps, inputs.context, inputs.added_cond_kwargs)
    assert not torch.equal(got, plain)  # the control changes the output
    assert torch.equal(got, expected)


def test_mask_scales_the_added_feature():
    """The mask multiplies what ControlNeXt adds, area-resized to the stream's resolution."""
    reference = ReferenceModuleA(32)
    ours = ControlNeXtModel(type(MODULE_A_CONFIG)(**{**MODULE_A_CONFIG.__dict__, "final_out_channels": 32,
                                                     "variant": SDXL}))
    ours.load_state_dict(reference_state(reference, seed=5))
    inputs = make_inputs("sdxl", batch=2)
    image = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    plain = ControlStack([ControlEntry(ours, image)]).contributions(inputs.x, inputs.timesteps, inputs.context,
                                                                    inputs.y)
    masked = ControlStack([ControlEntry(ours, image, mask=mask)]).contributions(inputs.x, inputs.timesteps,
                                                                                inputs.context, inputs.y)
    hidden = torch.randn(2, 32, 8, 8)
    full, half = plain.stream_addition(0, hidden), masked.stream_addition(0, hidden)
    assert torch.equal(half[..., :4], full[..., :4]) and half[..., 4:].abs().max() == 0


# ---- variants: decided by the file and the base model together ----------------------------------------

def test_variant_comes_from_the_file_then_the_base_model(tmp_path):
    a = save_state_dict(reference_state(ReferenceModuleA(), 1), tmp_path / "a.safetensors")
    b = save_state_dict(reference_state(ReferenceModuleB(), 1), tmp_path / "b.safetensors")
    module_a, module_b = load_controlnext(a), load_controlnext(b)
    standard = controlnet_core.protocol.standard_layout
    assert module_a.variant_for(standard("sdxl")) == SDXL and module_a.variant_for(standard("sd1")) == SD15
    assert module_b.variant_for(standard("sd1")) == SD15_OLD
    with pytest.raises(ControlNetError, match="serves SDXL and SD1.5 bases, not .*SD2.x"):
        module_a.check_fits(standard("sd2"))
    with pytest.raises(ControlNetError, match=r"SD1.5 \(old inference module\)\) does not fit .*SDXL"):
        module_b.check_fits(standard("sdxl"))
    module_a.check_fits(standard("sdxl"))
    module_a.check_fits(standard("sd1"))
    with pytest.raises(CheckpointError, match="old SD1.5 ControlNeXt module; it cannot run as 'sdxl'"):
        load_controlnext(b, variant=SDXL)


def test_a_module_without_its_unet_weights_still_runs(tmp_path):
    path = save_state_dict(reference_state(ReferenceModuleA(), 1), tmp_path / "controlnet.safetensors")
    module = load_controlnext(path)
    assert module.unet_weight_patches() == {}
    inputs = make_inputs("sd1", batch=1)
    contribution = ControlStack([ControlEntry(module, torch.rand(1, 64, 64, 3))]).contributions(
        inputs.x, inputs.timesteps, inputs.context, layout=controlnet_core.protocol.standard_layout("sd1"))
    assert list(contribution.stream) == [3]  # new SD1.5: after down block 0 (input block 3)


# ---- the UNet weight subset ---------------------------------------------------------------------------

def _to_out_subset(unet, attention: str = "") -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items() if "to_out" in k and attention in k}


def _ldm_to_diffusers_to_out(key: str) -> str:
    """The tiny sd1 UNet's attention blocks, ldm -> diffusers, by hand: input_blocks 1, 2 / 4, 5 are
    down_blocks 0 / 1 attentions 0, 1; middle_block.1 is mid_block.attentions.0; output_blocks 3..8 are
    up_blocks 1, 2 attentions 0..2 (up block 0 has no attention)."""
    table = {"input_blocks.1.1.": "down_blocks.0.attentions.0.", "input_blocks.2.1.": "down_blocks.0.attentions.1.",
             "input_blocks.4.1.": "down_blocks.1.attentions.0.", "input_blocks.5.1.": "down_blocks.1.attentions.1.",
             "middle_block.1.": "mid_block.attentions.0."}
    for index in range(3, 9):
        table[f"output_blocks.{index}.1."] = f"up_blocks.{index // 3}.attentions.{index % 3}."
    for ldm, diffusers in table.items():
        if key.startswith(ldm):
            return diffusers + key[len(ldm):]
    raise KeyError(key)


@pytest.mark.parametrize("kind, file_name", [("delta", "unet_weight_increasements.safetensors"),
                                             ("full", "unet.safetensors")])
def test_unet_weights_patch_the_base_like_loading_them_into_diffusers(kind, file_name, tmp_path):
    base = make_diffusers_unet("sd1", seed=4)
    generator = torch.Generator().manual_seed(11)
    deltas = {k: 0.01 * torch.randn(v.shape, generator=generator) / math.sqrt(v[0].numel() if v.ndim > 1 else 1)
              for k, v in _to_out_subset(base).items()}
    stored = deltas if kind == "delta" else {k: base.state_dict()[k] + d for k, d in deltas.items()}
    path = save_state_dict(stored, tmp_path / file_name)
    patches = load_unet_subset(path, family="sd1", kind="auto")
    assert len(patches) == len(stored) and all(p[0] == ("diff" if kind == "delta" else "set") for p in patches.values())
    # Reference: the released loader's way, W + delta (or the full values) loaded into diffusers.
    reference = make_diffusers_unet("sd1", seed=4)
    reference.load_state_dict({k: base.state_dict()[k] + d for k, d in deltas.items()}, strict=False)
    patched = make_diffusers_unet("sd1", seed=4)
    state = patched.state_dict()
    with torch.no_grad():
        for key, (how, tensor) in patches.items():
            target = state[_ldm_to_diffusers_to_out(key)]
            target.copy_(target + tensor if how == "diff" else tensor)
    inputs = make_inputs("sd1")
    with torch.no_grad():
        expected = reference(inputs.x, inputs.timesteps, inputs.context, return_dict=False)[0]
        got = patched(inputs.x, inputs.timesteps, inputs.context, return_dict=False)[0]
    assert torch.equal(got, expected)


def test_unet_weights_kind_from_name_magnitudes_or_the_caller():
    base = make_diffusers_unet("sd1", seed=4)
    full = _to_out_subset(base)
    small = {k: v * 1e-3 for k, v in full.items()}
    assert {p[0] for p in load_unet_subset(full, family="sd1").values()} == {"set"}
    assert {p[0] for p in load_unet_subset(small, family="sd1").values()} == {"diff"}
    assert {p[0] for p in load_unet_subset(full, family="sd1", kind="delta").values()} == {"diff"}
    assert {p[0] for p in load_unet_subset(full, family="sd1", name="x/unet_weight_increasements.bin").values()} \
        == {"diff"}
    with pytest.raises(CheckpointError, match="kind: expected one of"):
        load_unet_subset(full, family="sd1", kind="deltas")


def test_companion_decides_module_a_variant_and_must_match(tmp_path):
    module = save_state_dict(reference_state(ReferenceModuleA(), 1), tmp_path / "controlnet.safetensors")
    sd1_subset = save_state_dict(_to_out_subset(make_diffusers_unet("sd1", seed=4)), tmp_path / "unet.safetensors")
    sdxl_subset = save_state_dict(_to_out_subset(make_diffusers_unet("sdxl", seed=4), "attn2"),
                                  tmp_path / "unet_xl.safetensors")
    assert load_controlnext(module, unet_weights=sd1_subset).config.variant == SD15
    assert load_controlnext(module, unet_weights=sdxl_subset).config.variant == SDXL  # transformer depth 2
    with pytest.raises(CheckpointError, match="holds sd1 UNet weights but .* runs as sdxl"):
        load_controlnext(module, unet_weights=sd1_subset, variant=SDXL)


def test_bad_files_are_named(tmp_path):
    subset = save_state_dict(_to_out_subset(make_diffusers_unet("sd1", seed=4)), tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="UNet weight subset"):
        load_controlnext(subset)
    identity = controlnet_core.identify(subset)
    assert (identity.system, identity.variant, identity.runs_here) == ("ControlNeXt", "UNet weight subset", False)
    with pytest.raises(InputError, match="expected B×3×H×W"):
        load_controlnext(reference_state(ReferenceModuleA(), 1))(torch.rand(1, 1, 64, 64), torch.tensor([1.0]))
