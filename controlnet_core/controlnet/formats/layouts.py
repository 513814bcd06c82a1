"""Recognising a ControlNet state dict's layout and bringing it to the original (ldm) key names.

Supported: the original layout (bare or under `control_model.`, including full training
checkpoints that also carry UNet/VAE/CLIP weights), the diffusers layout, and "diff" ControlNets
whose encoder weights are deltas on a base UNet. Other control systems are told apart by the
systems table (controlnet_core/systems.py) before these functions see a state dict.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ...errors import CheckpointError

LDM_PREFIX = "control_model."
LDM_MARKER = "zero_convs.0.0.weight"
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
DIFF_MARKER = "difference"
# The base UNet parts a diff ControlNet stores as deltas (hint block and zero convs are stored in full).
UNET_ENCODER_PREFIXES = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")

@dataclass
class LayoutInfo:
    layout: str              # "ldm" or "diffusers"
    prefixed: bool = False   # keys were under `control_model.`
    training_checkpoint: bool = False
    diff: bool = False       # weights are deltas on a base UNet


def is_controlnet(keys) -> bool:
    """Original (bare or under `control_model.`) or diffusers ControlNet keys are present."""
    return any(k == LDM_MARKER or k == LDM_PREFIX + LDM_MARKER or k == DIFFUSERS_MARKER for k in keys)


def detect_layout(keys: list[str], source: str) -> LayoutInfo:
    """Which layout `keys` are in; raises CheckpointError for anything we cannot load."""
    key_set = set(keys)
    diff = DIFF_MARKER in key_set
    prefixed = [k for k in keys if k.startswith(LDM_PREFIX)]
    control_keys = [k[len(LDM_PREFIX):] for k in prefixed] if prefixed else [k for k in keys if k != DIFF_MARKER]
    if LDM_MARKER in control_keys:
        extras = len(keys) - len(prefixed) - int(diff) if prefixed else 0
        return LayoutInfo("ldm", prefixed=bool(prefixed), training_checkpoint=extras > 0, diff=diff)
    if DIFFUSERS_MARKER in key_set:
        return LayoutInfo("diffusers", diff=diff)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise CheckpointError(f"{source} is a Stable Diffusion model checkpoint (UNet weights under "
                              f"'model.diffusion_model.'), not a ControlNet: put it in models/checkpoints")
    sample = ", ".join(sorted(keys)[:6]) or "no keys at all"
    raise CheckpointError(f"{source}: unknown layout; expected an original ControlNet (key {LDM_MARKER!r}, optionally "
                          f"under {LDM_PREFIX!r}) or a diffusers ControlNetModel (key {DIFFUSERS_MARKER!r}); "
                          f"found {len(keys)} keys such as {sample}")


def strip_to_control_keys(state_dict: Mapping[str, torch.Tensor], info: LayoutInfo) -> dict[str, torch.Tensor]:
    """Only the ControlNet's own tensors, without the `control_model.` prefix or the diff marker."""
    if info.prefixed:
        return {k[len(LDM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
    return {k: v for k, v in state_dict.items() if k != DIFF_MARKER}


def unet_encoder_from_checkpoint(unet_state_dict: Mapping[str, torch.Tensor], source: str = "base UNet") -> dict[str, torch.Tensor]:
    """The encoder weights (ldm names) of a UNet state dict in ldm layout, with or without the
    `model.diffusion_model.` / `diffusion_model.` prefix, or in diffusers layout."""
    for prefix in ("model.diffusion_model.", "diffusion_model.", ""):
        if f"{prefix}input_blocks.0.0.weight" in unet_state_dict:
            return {k[len(prefix):]: v for k, v in unet_state_dict.items()
                    if k.startswith(prefix) and k[len(prefix):].startswith(UNET_ENCODER_PREFIXES)}
    if "conv_in.weight" in unet_state_dict and any(k.startswith("down_blocks.") for k in unet_state_dict):
        from ...ldm.diffusers_keys import diffusers_unet_encoder_to_ldm

        return diffusers_unet_encoder_to_ldm(dict(unet_state_dict))
    raise CheckpointError(f"{source}: expected UNet weights (key 'input_blocks.0.0.weight', optionally under "
                          f"'model.diffusion_model.', or a diffusers UNet with 'conv_in.weight'); found none")


def apply_difference(control: dict[str, torch.Tensor], base_unet: Mapping[str, torch.Tensor] | None,
                     source: str) -> dict[str, torch.Tensor]:
    """A diff ControlNet's encoder = base UNet encoder + stored delta."""
    if base_unet is None:
        raise CheckpointError(f"{source} is a 'diff' ControlNet: its weights are differences from a base UNet, so it "
                              f"needs that model's weights (pass base_unet=..., or in ComfyUI load it with a model)")
    base = unet_encoder_from_checkpoint(base_unet)
    out = dict(control)
    for key, delta in control.items():
        if key.startswith(UNET_ENCODER_PREFIXES):
            if key not in base:
                raise CheckpointError(f"{source}: diff ControlNet key {key!r} has no counterpart in the base UNet")
            if base[key].shape != delta.shape:
                raise CheckpointError(f"{source}: diff ControlNet key {key!r} is {tuple(delta.shape)} but the base UNet's "
                                      f"is {tuple(base[key].shape)}: the base model is of another family")
            out[key] = delta + base[key].to(delta.dtype)
    return out
