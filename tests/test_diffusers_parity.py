"""Parity of controlnet_core against diffusers, the independent reference implementation.

Every parameter of the reference models is random (zero convs and the hint block's last conv
included: diffusers initialises them to zero, which would make the comparison vacuous), the hint
is random in [0, 1], and latent, timesteps and text context are random.

SDXL conditioning: diffusers takes `added_cond_kwargs = {text_embeds: B×1280, time_ids: B×6}` and
inside ControlNetModel.forward embeds each time id with Timesteps(256, flip_sin_to_cos=True,
freq_shift=0), i.e. [cos | sin] with frequencies 10000^(-k/128), flattens them to B×1536 and
concatenates them after text_embeds before `add_embedding`. Our model takes the finished vector
`y` (B×2816), built the way ComfyUI's SDXL model builds it: `tests.factories.sdxl_y`, which
implements that sinusoid on its own. Our `label_emb` then equals diffusers' `add_embedding`.

Equality: every comparison is bit for bit. The same operations run in the same order on the same
values in both implementations (the CPU GEMM path of the bottom convolutions, which sums in another
order, needs ≥ 1024 channels and never runs at these sizes). Batches are 2: with a batch of 1,
diffusers' linear-projection transformers reshape the feature map into a strided view instead of a
copy, which sends proj_in down another GEMM kernel (last-bit differences); the host, like this
pack, always hands it a contiguous copy.
"""
from __future__ import annotations

import pytest
import torch

import controlnet_core
from controlnet_core.ldm.diffusers_keys import diffusers_unet_encoder_to_ldm
from tests.factories import (
    CONFIG_NAMES,
    diffusers_state_dict,
    ldm_state_dict,
    make_diffusers_controlnet,
    make_diffusers_unet,
    make_inputs,
    save_state_dict,
    tiny_config,
    write_checkpoint,
)

def assert_matches(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} vs diffusers {tuple(reference.shape)}"
    error = float((ours.float() - reference.float()).abs().max())
    assert torch.equal(ours, reference), f"{what}: not bit-identical (max abs error {error:.3g})"


def assert_residuals_match(ours: controlnet_core.Residuals, down_ref, mid_ref) -> None:
    assert len(ours.down) == len(down_ref)
    for index, (a, b) in enumerate(zip(ours.down, down_ref)):
        assert_matches(a, b, f"down residual {index}")
    assert_matches(ours.mid, mid_ref, "mid residual")


def diffusers_residuals(model, inputs, conditioning_scale: float = 1.0):
    with torch.no_grad():
        down, mid = model(inputs.x, inputs.timesteps, inputs.context, inputs.hint,
                          conditioning_scale=conditioning_scale, added_cond_kwargs=inputs.added_cond_kwargs,
                          return_dict=False)
    return list(down), mid


def run_ours(model: controlnet_core.ControlNetModel, inputs) -> controlnet_core.Residuals:
    with torch.no_grad():
        return model(inputs.x, inputs.hint, inputs.timesteps, inputs.context, inputs.y)


@pytest.fixture(scope="module", params=CONFIG_NAMES)
def reference(request):
    """(config name, random diffusers ControlNetModel, inputs, its residuals), built once per config."""
    name = request.param
    model = make_diffusers_controlnet(name, seed=0)
    inputs = make_inputs(name)
    return name, model, inputs, diffusers_residuals(model, inputs)


# "ldm_prefixed": original layout under control_model.; "training": plus the base model's
# model.diffusion_model.*, first_stage_model.*, cond_stage_model.* keys.
@pytest.mark.parametrize("variant", ["diffusers", "ldm", "ldm_prefixed", "training"])
def test_residuals_match_diffusers(reference, variant, tmp_path):
    name, model, inputs, (down_ref, mid_ref) = reference
    config = tiny_config(name)
    path = write_checkpoint(tmp_path, name, variant, controlnet=model)
    ours = controlnet_core.load_controlnet(path, overrides=config.overrides)

    assert ours.family == config.expected_family
    residuals = run_ours(ours, inputs)
    assert_residuals_match(residuals, down_ref, mid_ref)
    # Plain contiguous tensors like diffusers' (a channels-last view once leaked out of the linear-projection
    # transformer and changed kernels downstream).
    assert all(r.is_contiguous() for r in residuals.down + [residuals.mid])
    # Guard against a vacuous pass: the hint must matter.
    with torch.no_grad():
        other_hint = ours(inputs.x, 1.0 - inputs.hint, inputs.timesteps, inputs.context, inputs.y)
    assert not torch.allclose(other_hint.mid, residuals.mid, atol=1e-3)


def test_cached_hint_embedding_matches_diffusers(reference):
    name, model, inputs, (down_ref, mid_ref) = reference
    ours = controlnet_core.load_controlnet(diffusers_state_dict(model), overrides=tiny_config(name).overrides)
    with torch.no_grad():
        embedding = ours.embed_hint(inputs.hint)
        residuals = ours(inputs.x, None, inputs.timesteps, inputs.context, inputs.y, hint_embedding=embedding)
    assert_residuals_match(residuals, down_ref, mid_ref)


def test_fp16_file_matches_diffusers_on_rounded_weights(tmp_path):
    """An fp16 checkpoint loaded for fp32 compute equals diffusers running the same fp16-rounded weights."""
    name = "sd1"
    model = make_diffusers_controlnet(name, seed=3)
    path = write_checkpoint(tmp_path, name, "ldm_fp16", controlnet=model)
    rounded = model.to(torch.float16).to(torch.float32)
    inputs = make_inputs(name, seed=4)
    ours = controlnet_core.load_controlnet(path, dtype=torch.float32, overrides=tiny_config(name).overrides)
    assert ours.dtype == torch.float32
    assert_residuals_match(run_ours(ours, inputs), *diffusers_residuals(rounded, inputs))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_stack_strength_matches_diffusers_conditioning_scale(name):
    model = make_diffusers_controlnet(name, seed=5)
    inputs = make_inputs(name, seed=6, batch=2)
    ours = controlnet_core.load_controlnet(diffusers_state_dict(model), overrides=tiny_config(name).overrides)
    image = inputs.hint.permute(0, 2, 3, 1)  # ComfyUI IMAGE layout, already at 8× the latent size
    stack = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=ours, image=image, strength=0.7)])
    residuals = stack.residuals(inputs.x, inputs.timesteps, inputs.context, inputs.y)
    assert_residuals_match(residuals, *diffusers_residuals(model, inputs, conditioning_scale=0.7))


def unet_output(unet, inputs, down=None, mid=None) -> torch.Tensor:
    with torch.no_grad():
        return unet(inputs.x, inputs.timesteps, inputs.context, added_cond_kwargs=inputs.added_cond_kwargs,
                    down_block_additional_residuals=None if down is None else tuple(down),
                    mid_block_additional_residual=mid, return_dict=False)[0]


def test_residuals_drive_diffusers_unet_like_diffusers_controlnet(reference):
    """Our residuals in diffusers' UNet give the output diffusers' own ControlNet path gives."""
    name, model, inputs, (down_ref, mid_ref) = reference
    unet = make_diffusers_unet(name, seed=11)
    ours = controlnet_core.load_controlnet(diffusers_state_dict(model), overrides=tiny_config(name).overrides)
    residuals = run_ours(ours, inputs)

    expected = unet_output(unet, inputs, down_ref, mid_ref)
    actual = unet_output(unet, inputs, residuals.down, residuals.mid)
    assert_matches(actual, expected, "UNet output")
    assert not torch.allclose(expected, unet_output(unet, inputs), atol=1e-3), "control changed nothing"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_from_unet_copies_encoder_and_adds_nothing(name):
    unet = make_diffusers_unet(name, seed=21)
    unet_state = unet.state_dict()
    inputs = make_inputs(name, seed=22)
    ours = controlnet_core.from_unet(unet_state, overrides=tiny_config(name).overrides)

    ours_state = ours.state_dict()
    encoder = diffusers_unet_encoder_to_ldm(unet_state)
    for key, value in encoder.items():
        assert torch.equal(ours_state[key], value), key
    # A fresh ControlNet leaves the UNet exactly as it was.
    residuals = run_ours(ours, inputs)
    assert torch.equal(unet_output(unet, inputs, residuals.down, residuals.mid), unet_output(unet, inputs))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_from_unet_matches_diffusers_from_unet(name):
    """Same encoder as diffusers' ControlNetModel.from_unet once both get the same (non-zero) zero
    convs; the hint block's last conv stays zero in both, so the hint adds nothing on either side."""
    from diffusers import ControlNetModel

    unet = make_diffusers_unet(name, seed=31)
    inputs = make_inputs(name, seed=32)
    ours = controlnet_core.from_unet(unet.state_dict(), overrides=tiny_config(name).overrides)
    reference = ControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(33)
    with torch.no_grad():
        pairs = [(z[0], d) for z, d in zip(ours.zero_convs, reference.controlnet_down_blocks)]
        pairs.append((ours.middle_block_out[0], reference.controlnet_mid_block))
        assert len(pairs) == len(reference.controlnet_down_blocks) + 1
        for mine, theirs in pairs:
            weight = torch.randn(theirs.weight.shape, generator=generator) / theirs.weight.shape[1] ** 0.5
            bias = 0.05 * torch.randn(theirs.bias.shape, generator=generator)
            for conv in (mine, theirs):
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
    assert_residuals_match(run_ours(ours, inputs), *diffusers_residuals(reference, inputs))


def test_pth_diffusers_file_matches(tmp_path):
    """A diffusers-layout state dict saved with torch.save (plain tensors) loads like the safetensors one."""
    name = "sd2"
    model = make_diffusers_controlnet(name, seed=41)
    inputs = make_inputs(name, seed=42)
    path = save_state_dict(diffusers_state_dict(model), tmp_path / "controlnet.pth")
    ours = controlnet_core.load_controlnet(path, overrides=tiny_config(name).overrides)
    assert_residuals_match(run_ours(ours, inputs), *diffusers_residuals(model, inputs))


# The released head conventions at small widths, without overrides: SD1.x 8 heads per layer; SD2.x
# and SDXL 64 channels per head (diffusers' attention_head_dim then lists heads per level).
HEAD_CONVENTIONS = {
    "sd1": dict(block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False),
    "sd2": dict(block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                cross_attention_dim=1024, attention_head_dim=(1, 2), use_linear_projection=True),
    "sdxl": dict(block_out_channels=(64, 128, 192),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 cross_attention_dim=2048, attention_head_dim=(1, 2, 3), use_linear_projection=True,
                 transformer_layers_per_block=(1, 1, 2), addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}


@pytest.mark.parametrize("name", sorted(HEAD_CONVENTIONS))
def test_head_counts_are_inferred_without_overrides(name, tmp_path):
    """Loaded with no config overrides, each family's head convention must be the released one:
    64 channels per head instead of 8 heads (or 32 channels per head) changes every attention."""
    from diffusers import ControlNetModel

    from tests.factories import randomize_

    model = randomize_(ControlNetModel(layers_per_block=1, norm_num_groups=32, **HEAD_CONVENTIONS[name]), 7).eval()
    path = save_state_dict(ldm_state_dict(model), tmp_path / f"{name}.safetensors")
    ours = controlnet_core.load_controlnet(path)
    heads = {"sd1": (8, None), "sd2": (None, 64), "sdxl": (None, 64)}[name]
    assert (ours.config.family, ours.config.num_heads, ours.config.num_head_channels) == (name, *heads)
    inputs = make_inputs(name, batch=2, latent_size=8)
    down, mid = diffusers_residuals(model, inputs)
    assert_residuals_match(run_ours(ours, inputs), down, mid)
