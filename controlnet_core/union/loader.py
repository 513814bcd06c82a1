"""Loading a Union ControlNet file (diffusers layout, as xinsir publishes it) and recognising one."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..building import build_model
from ..controlnet.formats import infer_config
from ..errors import CheckpointError
from ..identity import Identity
from ..ldm.diffusers_keys import diffusers_to_ldm
from ..ops import default_operations
from .control import UnionControl
from .control_types import TYPE_NAMES
from .model import UnionConfig, UnionControlNetModel

DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
LDM_MARKER = "input_hint_block.0.weight"
UNION_MARKERS = ("control_add_embedding.linear_1.bias", "task_embedding")
# The Union's own parts; everything else is a diffusers SDXL ControlNet.
UNION_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")
_LAYER = re.compile(r"^transformer_layes\.(\d+)\.")


def is_union(shapes: Mapping[str, object]) -> bool:
    return DIFFUSERS_MARKER in shapes and any(marker in shapes for marker in UNION_MARKERS)


def union_config(shapes: Mapping[str, tuple[int, ...]], source: str) -> UnionConfig:
    """Type count and token width from `task_embedding`, layers by counting; heads are fixed (8)."""
    if "task_embedding" not in shapes or "control_add_embedding.linear_1.weight" not in shapes:
        raise CheckpointError(f"{source}: a Union ControlNet needs 'task_embedding' and "
                              "'control_add_embedding.linear_1.weight'; the file is incomplete")
    types, channels = tuple(shapes["task_embedding"])
    type_dim, remainder = divmod(tuple(shapes["control_add_embedding.linear_1.weight"])[1], types)
    if remainder:
        raise CheckpointError(f"{source}: control_add_embedding.linear_1 reads {types * type_dim + remainder} values, "
                              f"not a multiple of its {types} control types")
    layers = len({m.group(1) for k in shapes if (m := _LAYER.match(k))})
    return UnionConfig(num_control_types=types, channels=channels, layers=layers, type_embed_dim=type_dim)


def _split(state: Mapping[str, object]) -> tuple[dict, dict]:
    union = {k: v for k, v in state.items() if k.startswith(UNION_PREFIXES)}
    return {k: v for k, v in state.items() if k not in union}, union


def load_union(state: Mapping[str, torch.Tensor], *, source: str = "state dict", dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu", overrides: Mapping[str, object] | None = None,
               operations=default_operations, compute_dtype: torch.dtype | None = None) -> UnionControl:
    """A Union ControlNet (6 or 8 types) from a diffusers-layout state dict (the released files) or
    from the host's loaded module (ldm names, `attn.in_proj.weight`), as an untyped UnionControl
    (`with_type` picks a control type per entry)."""
    controlnet_part, union_part = _split(state)
    if LDM_MARKER in controlnet_part:  # the host's module: ldm names already, one Linear for in_proj
        control = dict(controlnet_part)
        union_part = {k.replace(".attn.in_proj.", ".attn.in_proj_"): v for k, v in union_part.items()}
    else:
        control = diffusers_to_ldm(controlnet_part)
    config = infer_config({k: tuple(v.shape) for k, v in control.items()}, source, overrides)
    union = union_config({k: tuple(v.shape) for k, v in union_part.items()}, source)
    network = build_model(lambda dt: UnionControlNetModel(config, union, dtype=dt, operations=operations,
                                                          compute_dtype=compute_dtype),
                          {**control, **union_part}, source=source, what=f"Union ControlNet ({config.family})",
                          dtype=dtype, device=device)
    network.source = source
    return UnionControl(network)


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    """A Union ControlNet for the systems table, or None."""
    if not is_union(shapes):
        return None
    types = tuple(shapes["task_embedding"])[0] if "task_embedding" in shapes else None
    variant = {6: "6 control types", 8: "ProMax, 8 control types"}.get(types, f"{types} control types")
    details = {"control types": ", ".join(TYPE_NAMES[:types or 0]) or "unknown",
               "fusion": "entries of one file run in one forward (one multi-hot type, the condition transformer)"}
    family = "sdxl"   # every released Union file
    controlnet_part, union_part = _split(shapes)
    try:
        config = infer_config(diffusers_to_ldm(controlnet_part), source)
        union_config(union_part, source)
    except (CheckpointError, ValueError, KeyError) as exc:  # an incomplete file: named, refused at load
        details["problem"] = str(exc)
    else:
        family = config.family
        details["hint channels"] = config.hint_channels
    return Identity("Union", variant, "diffusers", family, details=details)
