"""load_controlnet / from_unet / describe: from a file or state dict to a ready ControlNetModel.

The model is built on the meta device and the file's tensors are assigned into it, so nothing is
random-initialised first and loading needs little more memory than the file itself. The file's
dtype is kept unless the caller asks for a compute dtype.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint_io import read_state_dict, read_tensor_shapes
from .config import ControlNetConfig
from ..errors import CheckpointError
from .formats import apply_difference, detect_layout, infer_config, strip_to_control_keys, unet_encoder_from_checkpoint
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


def _dominant_float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    counts = Counter(v.dtype for v in state_dict.values() if v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _check_keys(model: ControlNetModel, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, found {tuple(state_dict[k].shape)}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:4])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not match the ControlNet architecture inferred from it "
                              f"({model.config.family}): " + "; ".join(problems) + ". The file is truncated, "
                              "edited, or needs config overrides.")


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: ControlNetConfig, *, source: str,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> ControlNetModel:
    """Meta-device construction, then the tensors are assigned in (no random init, no extra copy)."""
    dtype = dtype or _dominant_float_dtype(state_dict)
    with torch.device("meta"):
        model = ControlNetModel(config, dtype=dtype)
    _check_keys(model, state_dict, source)
    tensors = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
               for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _source_name(source: StateDictSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def load_controlnet(source: StateDictSource, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    overrides: Mapping[str, object] | None = None,
                    base_unet: Mapping[str, torch.Tensor] | None = None) -> ControlNetModel:
    """A ControlNetModel from a checkpoint file (.safetensors, or .pth/.ckpt/.bin read with
    weights_only=True) or a state dict, in original or diffusers layout.

    dtype: compute dtype; default keeps the file's. overrides: ControlNetConfig fields to force
    (e.g. num_heads for an unusual model). base_unet: UNet state dict, needed by "diff" ControlNets.
    """
    name = _source_name(source)
    state_dict = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{name}: expected a non-empty state dict of tensors, found {type(state_dict).__name__}")
    control, info = _to_ldm(state_dict, name)
    if info.diff:
        control = apply_difference(control, base_unet, name)
    config = infer_config({k: tuple(v.shape) for k, v in control.items()}, name, overrides)
    model = build_from_state_dict(control, config, source=name, dtype=dtype, device=device)
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
    dtype = _dominant_float_dtype(encoder)
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


def describe(source: StateDictSource) -> dict:
    """What a ControlNet file is, read from its tensor shapes (safetensors data is not loaded)."""
    name = _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        shapes_and_dtypes = read_tensor_shapes(source)
    else:
        shapes_and_dtypes = {k: (tuple(v.shape), v.dtype) for k, v in source.items()}
    shapes = {k: s for k, (s, _) in shapes_and_dtypes.items()}
    control, info = _to_ldm(shapes, name)
    config = infer_config(control, name)
    dtypes = Counter(d for _, d in strip_to_control_keys(shapes_and_dtypes, info).values())
    latent = 128 if config.family == "sdxl" else 64
    channels, scales = config.residual_channels(), config.residual_downscale()
    residual_shapes = [(c, latent // f, latent // f) for c, f in zip(channels, scales)]
    parameters = sum(math.prod(s) for s in control.values())
    layout = info.layout + (" (control_model. prefix)" if info.prefixed else "") + \
        (", full training checkpoint" if info.training_checkpoint else "") + (", diff" if info.diff else "")
    size = Path(source).stat().st_size if isinstance(source, (str, os.PathLike)) else None
    return {
        "source": name,
        "family": config.family,
        "layout": layout,
        "hint_channels": config.hint_channels,
        "residual_count": {"down": config.num_down_residuals, "mid": 1},
        "residual_shapes": {"latent": (latent, latent), "down": residual_shapes[:-1], "mid": residual_shapes[-1]},
        "parameters": parameters,
        "dtype": str(dtypes.most_common(1)[0][0]).replace("torch.", "") if dtypes else "unknown",
        "file_bytes": size,
        "config": config.to_dict(),
    }
