"""Control-LoRA (Stability): a ControlNet stored as up·down differences from the sampled model's own
UNet (see model.py)."""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..building import dominant_float_dtype
from ..checkpoint_io import read_state_dict
from ..controlnet.formats import infer_config
from ..errors import CheckpointError
from ..identity import Identity
from ..ops import default_operations
from .model import DOWN, MARKER, UP, ControlLoraModel, merged_weight, weight_shapes


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    if MARKER not in shapes:
        return None
    try:
        config = infer_config(weight_shapes(shapes), source)
    except CheckpointError as error:
        return Identity("Control-LoRA", "unreadable", "ldm (up/down pairs)", None, runs_here=False, advice=str(error))
    ranks = sorted({s[0] for k, s in shapes.items() if k.endswith(DOWN) and len(s) >= 2})
    details = {"rank": ranks[-1] if ranks else "?", "hint channels": config.hint_channels,
               "low-rank weights": sum(k.endswith(UP) for k in shapes),
               "needs": "the sampled model's UNet weights (built from them at the start of every run)"}
    return Identity("Control-LoRA", f"rank {ranks[-1] if ranks else '?'}", "ldm (up/down pairs)", config.family,
                    details=details)


def load_control_lora(source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                      base_unet: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                      device: str | torch.device = "cpu", operations=default_operations,
                      compute_dtype: torch.dtype | None = None,
                      overrides: Mapping[str, object] | None = None) -> ControlLoraModel:
    """A Control-LoRA file (or state dict). With `base_unet` (a UNet state dict) its ControlNet is
    built at once; otherwise call `use_base_unet` before running it (the nodes do, from the model
    being sampled, at the start of every run)."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if MARKER not in shapes:
        raise CheckpointError(f"{name}: not a Control-LoRA (no {MARKER!r} key)")
    orphans = [k for k in shapes if k.endswith(DOWN) and k[:-len(DOWN)] + UP not in shapes]
    if orphans:
        raise CheckpointError(f"{name}: {len(orphans)} '.down' tensors without their '.up' (e.g. {orphans[0]})")
    config = infer_config(weight_shapes(shapes), name, overrides)
    dtype = dtype or dominant_float_dtype(state)
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in state.items()
               if k != MARKER and "__" not in k and v.is_floating_point()}
    model = ControlLoraModel(tensors, config, operations=operations, compute_dtype=compute_dtype).eval()
    model.source = name
    if base_unet is not None:
        model.use_base_unet(base_unet)
    return model


__all__ = ["ControlLoraModel", "detect", "load_control_lora", "merged_weight", "weight_shapes"]
