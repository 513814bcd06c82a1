"""load_controlnet / from_unet / describe: from a file or state dict to a ready ControlNetModel.

The model is built on the meta device and the file's tensors are assigned into it, so nothing is
random-initialised first and loading needs little more memory than the file itself. The file's
dtype is kept unless the caller asks for a compute dtype.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..building import build_model, dominant_float_dtype
from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..ops import default_operations
from .config import ControlNetConfig
from ..identity import Identity
from .formats import (apply_difference, detect_layout, infer_config, is_controlnet, strip_to_control_keys,
                      unet_encoder_from_checkpoint)
from .model import ControlNetModel, hint_block_convs

StateDictSource = str | os.PathLike | Mapping[str, torch.Tensor]
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


SHUFFLE_SUFFIXES = ("_shuffle", "_shuffle_fp16")


def pools_by_name(source: str) -> bool:
    """Shuffle ControlNets (control_v11e_sd15_shuffle) are recognised by file name, as the host does: the
    name without its extension ends in _shuffle or _shuffle_fp16. Nothing in the weights tells them apart."""
    return os.path.splitext(os.path.basename(str(source)))[0].endswith(SHUFFLE_SUFFIXES)


def pools_by_diffusers_config(source: str) -> bool | None:
    """A diffusers model folder (lllyasviel/control_v11e_sd15_shuffle) keeps `global_pool_conditions` in
    the config.json beside its diffusion_pytorch_model[.fp16].safetensors: that value, or None when the
    file is not named so or no config beside it says. Other file names never read a config.json (a
    flat models folder may hold one that belongs to another model)."""
    path = Path(str(source))
    if not path.name.startswith("diffusion_pytorch_model") or not (path.parent / "config.json").is_file():
        return None
    config_path = path.parent / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{config_path} (the config beside {path.name}): expected readable JSON, found "
                              f"{type(error).__name__}: {error}") from error
    if not isinstance(config, dict) or "global_pool_conditions" not in config:
        return None
    value = config["global_pool_conditions"]
    if not isinstance(value, bool):
        raise CheckpointError(f"{config_path}: global_pool_conditions expected true or false, found {value!r}")
    return value


def pools_by_source(source: str) -> bool:
    """Whether a ControlNet file pools (a shuffle ControlNet): its diffusers config.json when it has
    one, else its file name (the host's rule)."""
    from_config = pools_by_diffusers_config(source)
    return pools_by_name(source) if from_config is None else from_config


def load_controlnet(source: StateDictSource, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    overrides: Mapping[str, object] | None = None,
                    base_unet: Mapping[str, torch.Tensor] | None = None, operations=default_operations,
                    compute_dtype: torch.dtype | None = None,
                    global_average_pooling: bool | None = None) -> ControlNetModel:
    """A ControlNetModel from a checkpoint file (.safetensors, or .pth/.ckpt/.bin read with
    weights_only=True) or a state dict, in original or diffusers layout.

    dtype: the weights' storage dtype; default keeps the file's. overrides: ControlNetConfig fields to
    force (e.g. num_heads for an unusual model). base_unet: UNet state dict, needed by "diff"
    ControlNets. operations / compute_dtype: layer classes (controlnet_core.ops) and the dtype they
    compute in, when it differs from the storage dtype (the host's casting ops). global_average_pooling:
    average every residual over height and width and control the conditional side only (shuffle
    ControlNets); None decides by the diffusers config.json or the file name (`pools_by_source`).
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
    if global_average_pooling is None:
        global_average_pooling = config.global_average_pooling or pools_by_source(name)
    config = config.replace(global_average_pooling=bool(global_average_pooling))
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
    model_channels = shapes["input_blocks.0.0.weight"][0]
    for index, (conv_in, conv_out, _) in enumerate(hint_block_convs(hint_channels, ControlNetConfig.hint_block_channels,
                                                                    model_channels)):
        shapes[f"input_hint_block.{2 * index}.weight"] = (conv_out, conv_in, 3, 3)
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
                                                                model.input_hint_block[-1]]
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
    try:  # identifying a file must not fail on its config: loading with pooling forced does not read it
        from_config = pools_by_diffusers_config(source)
    except CheckpointError as error:
        details["global average pooling"] = f"unknown: {error}"
    else:
        if from_config or (from_config is None and pools_by_name(source)):
            by = "its config.json" if from_config else "its file name"
            details["global average pooling"] = f"on (a shuffle ControlNet, by {by}): control on the positive side only"
    return Identity("ControlNet", "diff" if info.diff else config.family, layout, config.family, details=details,
                    needs_base_model=info.diff)
