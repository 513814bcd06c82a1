"""T2I-Adapter (TencentARC): a small network whose features are added to the UNet's encoder stream.

`load_t2i_adapter` reads full, XL and light adapters in the original (.pth) and diffusers layouts;
`detect` names a state dict's variant for `identify`, including the style adapters and CoAdapter
files the pack recognises but does not run.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..building import build_model
from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..identity import Identity
from ..ops import default_operations
from .config import T2IAdapterConfig
from .formats import diffusers_to_original, infer_config, is_diffusers_layout, is_light, strip_prefix
from .model import T2IAdapterModel

STYLE_MARKER = "style_embedding"
COADAPTER_FUSER_MARKERS = ("task_embedding", "spatial_feat_mapping.0.1.weight")
STYLE_ADVICE = ("load it with the host's 'Load Style Model' node and apply it with 'Apply Style Model' (its tokens "
                "extend the text conditioning; it is not a spatial control)")
COADAPTER_ADVICE = ("CoAdapter condition adapters are trained to be combined by the CoAdapter fuser, which neither "
                    "ComfyUI nor this pack runs; use the matching T2I-Adapter (t2iadapter_*_sd14v1 / sd15v2) instead")


def _strip(keys):
    return [k[len("adapter."):] if k.startswith("adapter.") else k for k in keys]


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    """A T2I-Adapter family file (full, XL, light, style, CoAdapter), or None."""
    keys = list(shapes)
    stripped = _strip(keys)
    name = Path(source).name.lower()
    if any(k == STYLE_MARKER for k in stripped):
        variant = "CoAdapter style" if "coadapter" in name else "style"
        return Identity("T2I-Adapter", variant, "original", "sd1", runs_here=False, advice=STYLE_ADVICE)
    if all(any(k == marker for k in stripped) for marker in COADAPTER_FUSER_MARKERS):
        return Identity("CoAdapter", "fuser", "original", "sd1", runs_here=False, advice=COADAPTER_ADVICE)
    diffusers = is_diffusers_layout(keys)
    if not diffusers and "conv_in.weight" not in stripped and "body.0.in_conv.weight" not in stripped:
        return None
    if not diffusers and not any(re.match(r"^body\.0\.(block1|body\.0\.block1)\.weight$", k) for k in stripped):
        return None
    try:
        config = _config(shapes, source)
    except CheckpointError:
        return None
    layout = "diffusers" if diffusers else "original"
    if name.startswith("coadapter"):
        return Identity("CoAdapter", f"{config.variant} condition adapter", layout, config.family, runs_here=False,
                        advice=COADAPTER_ADVICE)
    return Identity("T2I-Adapter", config.variant, layout, config.family, runs_here=True, details=_details(config))


def _config(shapes: Mapping[str, tuple[int, ...]], source: str) -> T2IAdapterConfig:
    if is_diffusers_layout(shapes):
        renamed, per_level = diffusers_to_original(shapes, source)
        return infer_config(renamed, source, per_level)
    return infer_config(strip_prefix(shapes), source)


def _details(config: T2IAdapterConfig) -> dict:
    return {"image channels": config.image_channels, "pixel unshuffle": config.unshuffle,
            "features": ", ".join(f"{c}@latent/{d}" for c, d in zip(config.channels, config.feature_downscale())),
            "residual blocks per level": config.num_res_blocks}


def load_t2i_adapter(source: str | os.PathLike | Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu", operations=default_operations,
                     compute_dtype: torch.dtype | None = None) -> T2IAdapterModel:
    """A T2IAdapterModel from a file (.safetensors, or .pth read with weights_only=True) or a state
    dict, in the original or the diffusers layout (diffusers light adapters included)."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    if not state:
        raise CheckpointError(f"{name}: expected a non-empty state dict of tensors")
    identity = detect({k: tuple(v.shape) for k, v in state.items()}, name)
    if identity is None or identity.system != "T2I-Adapter":
        raise CheckpointError(f"{name} is not a T2I-Adapter (no 'conv_in.weight' / 'body.0.in_conv.weight', "
                              "original or under 'adapter.')")
    if not identity.runs_here:
        raise CheckpointError(f"{name} is a {identity.system} ({identity.variant}), which this pack does not run: "
                              f"{identity.advice}")
    if is_diffusers_layout(state):
        state, per_level = diffusers_to_original(state, name)
    else:
        state, per_level = strip_prefix(state), None
    config = infer_config({k: tuple(v.shape) for k, v in state.items()}, name, per_level)
    model = build_model(lambda dt: T2IAdapterModel(config, dtype=dt, operations=operations,
                                                   compute_dtype=compute_dtype),
                        state, source=name, what=f"T2I-Adapter ({config.variant})", dtype=dtype, device=device)
    model.source = name
    return model


__all__ = ["T2IAdapterConfig", "T2IAdapterModel", "detect", "is_light", "load_t2i_adapter"]
