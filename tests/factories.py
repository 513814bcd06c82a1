"""Tiny random-weight ControlNets, UNets, inputs and checkpoint files for the test suite.

Three configurations keep each family's distinguishing features at a size where a forward takes
milliseconds:

- "sd1":  conv proj_in, a fixed 8 heads per attention layer, context 768, last level without attention.
- "sd2":  linear proj_in, 8 channels per head (the real SD2 uses 64: too wide for 32 channels),
          context 1024.
- "sdxl": linear proj_in, 8 channels per head, context 2048, "text_time" add embedding (adm 2816 =
          1280 pooled text + 6 time ids x 256), no attention on level 0, transformer depth 1 then 2
          (mid block 2), 3 levels.

Context and adm widths are the real ones so the loader's family inference (768 -> sd1, 1024 -> sd2,
2048 / adm -> sdxl) works unchanged; channel widths are tiny, so the head convention cannot be
the real one for sd2 / sdxl and `TinyConfig.overrides` carries it for `load_controlnet(...,
overrides=...)`.

The original-layout files are produced with `controlnet_core.ldm.diffusers_keys.diffusers_to_ldm`;
parity tests then compare against diffusers' own forward, which is independent of that table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm, diffusers_unet_encoder_to_ldm

CONFIG_NAMES = ("sd1", "sd2", "sdxl")

# SDXL's add embedding: pooled text embedding width and the Timesteps width of each time id.
SDXL_TEXT_EMBED_DIM = 1280
SDXL_TIME_ID_DIM = 256
SDXL_NUM_TIME_IDS = 6
SDXL_ADM_DIM = SDXL_TEXT_EMBED_DIM + SDXL_NUM_TIME_IDS * SDXL_TIME_ID_DIM  # 2816


@dataclass(frozen=True)
class TinyConfig:
    name: str
    # Keyword arguments shared by diffusers ControlNetModel and UNet2DConditionModel.
    diffusers_kwargs: dict[str, Any]
    # UNet2DConditionModel-only keyword arguments (decoder block types).
    unet_only_kwargs: dict[str, Any]
    # ControlNetConfig overrides our loader needs (the head convention; shapes cannot tell it).
    overrides: dict[str, Any]
    context_dim: int
    uses_adm: bool
    latent_size: int = 8
    context_tokens: int = 5
    expected_family: str = field(default="")

    @property
    def hint_size(self) -> int:
        return self.latent_size * 8

    @property
    def num_down_residuals(self) -> int:
        levels = len(self.diffusers_kwargs["block_out_channels"])
        return 1 + levels * self.diffusers_kwargs["layers_per_block"] + levels - 1


TINY_CONFIGS: dict[str, TinyConfig] = {
    "sd1": TinyConfig(
        name="sd1",
        diffusers_kwargs=dict(
            block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,  # diffusers' historical name: this is the number of heads (SD1: 8)
            use_linear_projection=False,
            norm_num_groups=32,
        ),
        unet_only_kwargs=dict(up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        overrides={"num_heads": 8},
        context_dim=768,
        uses_adm=False,
        expected_family="sd1",
    ),
    "sd2": TinyConfig(
        name="sd2",
        diffusers_kwargs=dict(
            block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=(4, 8, 8),  # heads per level = channels / 8
            use_linear_projection=True,
            norm_num_groups=32,
        ),
        unet_only_kwargs=dict(up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        overrides={"num_head_channels": 8},
        context_dim=1024,
        uses_adm=False,
        expected_family="sd2",
    ),
    "sdxl": TinyConfig(
        name="sdxl",
        diffusers_kwargs=dict(
            block_out_channels=(32, 64, 96),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2),
            cross_attention_dim=2048,
            attention_head_dim=(4, 8, 12),  # heads per level = channels / 8
            use_linear_projection=True,
            norm_num_groups=32,
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_ID_DIM,
            projection_class_embeddings_input_dim=SDXL_ADM_DIM,
        ),
        unet_only_kwargs=dict(up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
        overrides={"num_head_channels": 8},
        context_dim=2048,
        uses_adm=True,
        expected_family="sdxl",
    ),
}


def tiny_config(name: str) -> TinyConfig:
    if name not in TINY_CONFIGS:
        raise KeyError(f"unknown tiny config {name!r}; expected one of {CONFIG_NAMES}")
    return TINY_CONFIGS[name]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter non-trivial random values, zero convs and the hint block's last conv
    included (diffusers initialises those to zero, which would make any parity check vacuous).

    Weights get std 1/sqrt(fan_in) so activations stay O(1) through the network; norm scales
    1 + N(0, 0.1); biases N(0, 0.05).
    """
    generator = torch.Generator().manual_seed(seed)
    for submodule in module.modules():
        is_norm = isinstance(submodule, (torch.nn.GroupNorm, torch.nn.LayerNorm))
        for name, param in submodule.named_parameters(recurse=False):
            if is_norm and name == "weight":
                values = 1.0 + 0.1 * torch.randn(param.shape, generator=generator)
            elif param.ndim >= 2:
                fan_in = param[0].numel()
                values = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
            else:
                values = 0.05 * torch.randn(param.shape, generator=generator)
            param.copy_(values)
    return module


def make_diffusers_controlnet(name: str, seed: int = 0, hint_channels: int = 3):
    """A diffusers ControlNetModel of the tiny config with all parameters random (fp32, eval)."""
    from diffusers import ControlNetModel

    config = tiny_config(name)
    model = ControlNetModel(conditioning_channels=hint_channels, **config.diffusers_kwargs)
    return randomize_(model, seed).eval()


def make_diffusers_unet(name: str, seed: int = 1):
    """A diffusers UNet2DConditionModel of the tiny config with all parameters random (fp32, eval)."""
    from diffusers import UNet2DConditionModel

    config = tiny_config(name)
    model = UNet2DConditionModel(
        sample_size=config.latent_size, **config.diffusers_kwargs, **config.unet_only_kwargs
    )
    return randomize_(model, seed).eval()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ldm `timestep_embedding`: [cos(v * f_k), sin(v * f_k)] with f_k = max_period^(-k / (dim/2)).

    Written out here (not taken from diffusers) so that building `y` stays independent of the
    reference implementation it is compared with.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sdxl_y(text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """The SDXL `y` vector as ComfyUI's SDXL model builds it (`encode_adm`): the pooled text
    embedding followed by a 256-wide sinusoidal embedding of each of the 6 time ids
    (orig h, orig w, crop top, crop left, target h, target w), flattened per sample.

    diffusers computes the same thing inside ControlNetModel.forward: `add_time_proj(time_ids.flatten())`
    (Timesteps(256, flip_sin_to_cos=True, freq_shift=0) = cos then sin), reshaped to (B, 6*256)
    and concatenated after `text_embeds`; `add_embedding` is then our `label_emb`.
    """
    batch = text_embeds.shape[0]
    time_embeds = sinusoidal_embedding(time_ids.flatten(), SDXL_TIME_ID_DIM).reshape(batch, -1)
    return torch.cat([text_embeds.float(), time_embeds], dim=-1)


@dataclass
class TinyInputs:
    x: torch.Tensor  # B x 4 x h x w latent
    hint: torch.Tensor  # B x C x 8h x 8w in [0, 1]
    timesteps: torch.Tensor  # B, float
    context: torch.Tensor  # B x tokens x context_dim
    y: torch.Tensor | None  # B x 2816 for sdxl
    added_cond_kwargs: dict[str, torch.Tensor] | None  # diffusers' form of y


def make_inputs(name: str, batch: int = 2, seed: int = 123, hint_channels: int = 3,
                latent_size: int | None = None) -> TinyInputs:
    config = tiny_config(name)
    size = latent_size or config.latent_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    hint = torch.rand(batch, hint_channels, size * 8, size * 8, generator=generator)
    timesteps = torch.randint(1, 1000, (batch,), generator=generator).float()
    context = torch.randn(batch, config.context_tokens, config.context_dim, generator=generator)
    y = added = None
    if config.uses_adm:
        text_embeds = torch.randn(batch, SDXL_TEXT_EMBED_DIM, generator=generator)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).repeat(batch, 1)
        time_ids += torch.randint(0, 64, (batch, SDXL_NUM_TIME_IDS), generator=generator).float() * 8
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        y = sdxl_y(text_embeds, time_ids)
    return TinyInputs(x=x, hint=hint, timesteps=timesteps, context=context, y=y, added_cond_kwargs=added)


# ---------------------------------------------------------------------------------------------
# State dicts and checkpoint files
# ---------------------------------------------------------------------------------------------

def diffusers_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous, unshared copies (safetensors refuses shared storage)."""
    return {k: (v.to(dtype) if dtype is not None else v).detach().clone().contiguous()
            for k, v in model.state_dict().items()}


def ldm_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a diffusers ControlNetModel (no prefix)."""
    return diffusers_to_ldm(diffusers_state_dict(model, dtype))


def with_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def training_checkpoint_state_dict(controlnet: torch.nn.Module, unet: torch.nn.Module | None = None,
                                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Like a ControlNet training checkpoint (cldm): `control_model.*` plus the frozen base model's
    `model.diffusion_model.*`, `first_stage_model.*` and `cond_stage_model.*`, which a loader must ignore."""
    state = with_prefix(ldm_state_dict(controlnet, dtype), "control_model.")
    if unet is not None:
        state.update(with_prefix(diffusers_unet_encoder_to_ldm(diffusers_state_dict(unet, dtype)),
                                 "model.diffusion_model."))
    else:
        state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 4, 3, 3, dtype=dtype)
    extra_dtype = dtype or torch.float32
    state["first_stage_model.encoder.conv_in.weight"] = torch.randn(8, 3, 3, 3).to(extra_dtype)
    state["first_stage_model.decoder.conv_out.bias"] = torch.randn(3).to(extra_dtype)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(16, dtype=extra_dtype)
    return state


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path, wrap_in: str | None = None) -> Path:
    """Write `.safetensors` (safetensors) or `.pth` / `.ckpt` (torch.save of plain tensors, optionally
    wrapped as {wrap_in: state_dict} like Lightning's {"state_dict": ...})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        if wrap_in is not None:
            raise ValueError("safetensors files hold a flat tensor dict; wrap_in applies to .pth/.ckpt only")
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        torch.save({wrap_in: state_dict} if wrap_in else state_dict, path)
    else:
        raise ValueError(f"save_state_dict: unsupported suffix {path.suffix!r} in {path}")
    return path


# Variant name -> (layout, key prefix, file suffix, dtype, whether it is a training checkpoint).
CHECKPOINT_VARIANTS: dict[str, tuple[str, str, str, torch.dtype | None, bool]] = {
    "diffusers": ("diffusers", "", ".safetensors", None, False),
    "ldm": ("ldm", "", ".safetensors", None, False),
    "ldm_prefixed": ("ldm", "control_model.", ".safetensors", None, False),
    "training": ("ldm", "control_model.", ".safetensors", None, True),
    "ldm_pth": ("ldm", "", ".pth", None, False),
    "diffusers_pth": ("diffusers", "", ".pth", None, False),
    "ldm_fp16": ("ldm", "", ".safetensors", torch.float16, False),
    "ldm_bf16": ("ldm", "", ".safetensors", torch.bfloat16, False),
    "diffusers_fp16": ("diffusers", "", ".safetensors", torch.float16, False),
}


def write_checkpoint(directory: str | Path, name: str, variant: str, controlnet: torch.nn.Module | None = None,
                     seed: int = 0) -> Path:
    """Write the tiny `name` ControlNet (built from `seed` unless given) as one CHECKPOINT_VARIANTS file."""
    if variant not in CHECKPOINT_VARIANTS:
        raise KeyError(f"unknown checkpoint variant {variant!r}; expected one of {sorted(CHECKPOINT_VARIANTS)}")
    layout, prefix, suffix, dtype, training = CHECKPOINT_VARIANTS[variant]
    controlnet = controlnet if controlnet is not None else make_diffusers_controlnet(name, seed)
    if training:
        state = training_checkpoint_state_dict(controlnet, make_diffusers_unet(name, seed + 1), dtype)
    elif layout == "diffusers":
        state = diffusers_state_dict(controlnet, dtype)
    else:
        state = with_prefix(ldm_state_dict(controlnet, dtype), prefix)
    return save_state_dict(state, Path(directory) / f"{name}_{variant}{suffix}")


def write_all_checkpoints(directory: str | Path, name: str, seed: int = 0) -> dict[str, Path]:
    """Every CHECKPOINT_VARIANTS file of one tiny ControlNet (same weights in all of them)."""
    controlnet = make_diffusers_controlnet(name, seed)
    return {variant: write_checkpoint(directory, name, variant, controlnet, seed) for variant in CHECKPOINT_VARIANTS}
