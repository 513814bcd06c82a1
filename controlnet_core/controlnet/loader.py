"""load_controlnet / from_unet / describe: from a file or state dict to a ready ControlNetModel.

The model is built on the meta device and the file's tensors are assigned into it, so nothing is
random-initialised first and loading needs little more memory than the file itself. The file's
dtype is kept unless the caller asks for a compute dtype.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..building import build_model, dominant_float_dtype
from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..ops import default_operations
from .config import ControlNetConfig
from ..identity import Identity
from .formats import (apply_difference, detect_layout, infer_config, is_controlnet, strip_to_control_keys,
                      unet_encoder_from_checkpoint)
from .model import HINT_BLOCK_CONVS, ControlNetModel

StateDictSource = str | os.PathLike | Mapping[str, torch.Tensor]
# The last input_hint_block conv: index of the eighth conv once SiLUs sit between them.
LAST_HINT_CONV = 2 * (len(HINT_BLOCK_CONVS) - 1)
# Parts a ControlNet has and its base UNet does not.
CONTROLNET_ONLY_PREFIXES = ("zero_convs.", "middle_block_out.", "input_hint_block.")


def _to_ldm(state_dict: Mapping[str, torch.Tensor], source: str):
    info = detect_layout(list(state_dict), source)
    control = strip_to_control_keys(state_dict, info)
    if info.layout == "diffusers":
        from ..ldm.diffusers_keys import diffusers_to_ldm

        control = diffusers_to_ldm(control)
    return control, info


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: ControlNetConfig, *, source: str,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                          operations=default_operations, compute_dtype: torch.dtype | None = None) -> ControlNetModel:
    """Meta-device construction, then the tensors are assigned in (no random init, no extra copy)."""
    return build_model(lambda dt: ControlNetModel(config, dtype=dt, operations=operations, compute_dtype=compute_dtype),
                       state_dict, source=source, what=f"ControlNet ({config.family})", dtype=dtype, device=device)


def _refuse_other_systems(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """A file of another control system gets an error naming it (the systems table knows them all)."""
    from ..systems import detect as detect_system  # the table imports this package

    found = detect_system({k: tuple(v.shape) for k, v in state_dict.items()}, name)
    if found is None:
        if any(k.startswith("model.diffusion_model.") for k in state_dict):
            raise CheckpointError(f"{name} is a Stable Diffusion model checkpoint (UNet weights under "
                                  "'model.diffusion_model.'), not a ControlNet: put it in models/checkpoints")
        sample = ", ".join(sorted(state_dict)[:6]) or "no keys at all"
        raise CheckpointError(f"{name}: unknown layout; expected an original ControlNet (key 'zero_convs.0.0.weight', "
                              "optionally under 'control_model.') or a diffusers ControlNetModel (key "
                              f"'controlnet_cond_embedding.conv_in.weight'); found {len(state_dict)} keys such as {sample}")
    system, identity = found
    if identity.system != "ControlNet":
        use = "load it with controlnet_core.load_control" if identity.runs_here else f"this pack does not run it: {identity.advice}"
        raise CheckpointError(f"{name} is a {identity.title}, not a ControlNet; {use}")


def _source_name(source: StateDictSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def load_controlnet(source: StateDictSource, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    overrides: Mapping[str, object] | None = None,
                    base_unet: Mapping[str, torch.Tensor] | None = None, operations=default_operations,
                    compute_dtype: torch.dtype | None = None) -> ControlNetModel:
    """A ControlNetModel from a checkpoint file (.safetensors, or .pth/.ckpt/.bin read with
    weights_only=True) or a state dict, in original or diffusers layout.

    dtype: the weights' storage dtype; default keeps the file's. overrides: ControlNetConfig fields to
    force (e.g. num_heads for an unusual model). base_unet: UNet state dict, needed by "diff"
    ControlNets. operations / compute_dtype: layer classes (controlnet_core.ops) and the dtype they
    compute in, when it differs from the storage dtype (the host's casting ops).
    """
    name = _source_name(source)
    state_dict = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{name}: expected a non-empty state dict of tensors, found {type(state_dict).__name__}")
    _refuse_other_systems(state_dict, name)
    control, info = _to_ldm(state_dict, name)
    if info.diff:
        control = apply_difference(control, base_unet, name)
    config = infer_config({k: tuple(v.shape) for k, v in control.items()}, name, overrides)
    model = build_from_state_dict(control, config, source=name, dtype=dtype, device=device, operations=operations,
                                  compute_dtype=compute_dtype)
    model.source = name
    return model


def from_unet(unet_state_dict: Mapping[str, torch.Tensor], *, hint_channels: int = 3,
              overrides: Mapping[str, object] | None = None) -> ControlNetModel:
    """A new ControlNet initialised from a base UNet, as the method trains it from: the encoder
    copies the UNet's weights, every zero conv and the last hint conv are zero, so at first it adds
    nothing and the UNet's output is unchanged. Other hint convs get PyTorch's default init."""
    encoder = unet_encoder_from_checkpoint(unet_state_dict)
    shapes = {k: tuple(v.shape) for k, v in encoder.items()}
    shapes["input_hint_block.0.weight"] = (16, hint_channels, 3, 3)
    config = infer_config(shapes, "base UNet", overrides)
    dtype = dominant_float_dtype(encoder)
    model = ControlNetModel(config, dtype=dtype)
    loaded = model.load_state_dict(encoder, strict=False)
    # Only the ControlNet's own parts may be absent from a UNet; they are initialised below.
    missing = [k for k in loaded.missing_keys if not k.startswith(CONTROLNET_ONLY_PREFIXES)]
    if missing or loaded.unexpected_keys:
        raise CheckpointError(f"base UNet does not match the encoder inferred from it: missing {missing[:4]}, "
                              f"unexpected {loaded.unexpected_keys[:4]}")
    with torch.no_grad():
        zero_layers = [conv[0] for conv in model.zero_convs] + [model.middle_block_out[0],
                                                                model.input_hint_block[LAST_HINT_CONV]]
        for layer in zero_layers:
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    """A ControlNet (original, diffusers, training checkpoint or diff) for the systems table, or None."""
    if not is_controlnet(shapes):
        return None
    control, info = _to_ldm(shapes, source)
    config = infer_config(control, source)
    latent = 128 if config.family == "sdxl" else 64
    channels, scales = config.residual_channels(), config.residual_downscale()
    residuals = [f"{c}@{latent // f}" for c, f in zip(channels, scales)]
    layout = info.layout + (" (control_model. prefix)" if info.prefixed else "") + \
        (", full training checkpoint" if info.training_checkpoint else "")
    details = {"hint channels": config.hint_channels,
               "residuals": f"{config.num_down_residuals} skips + 1 middle (C@side for a {latent}² latent)",
               "skips": ", ".join(residuals[:-1]), "middle": residuals[-1]}
    if info.diff:
        details["needs"] = "the base model's UNet (its weights are deltas on it)"
    return Identity("ControlNet", "diff" if info.diff else config.family, layout, config.family, details=details)
