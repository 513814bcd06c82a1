"""The table of control systems: how each is recognised, and how it is loaded.

`identify(file)` names the system, layout and base family of any control file the field passes
around, from key names and shapes only (a .safetensors header; .pth files are read with
weights_only=True). `load_control(file)` loads any system the pack runs as a ControlModel
(protocol.py), which the stack and the nodes use without knowing which system it is.

Adding a system: one folder under controlnet_core/ with a `detect(shapes, source)` and a loader,
plus one entry in SYSTEMS. Detectors run in table order, so a system whose files also carry another
system's marker (Union files carry the diffusers ControlNet's; Control-LoRA files the zero convs)
comes before it.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import control_lora, controlnet, controlnext, foreign, lllite, t2i_adapter, union
from .controlnet.loader import pools_by_source
from .checkpoint_io import read_state_dict, read_tensor_shapes
from .errors import CheckpointError
from .identity import Identity
from .ops import default_operations
from .protocol import ControlModel

Source = str | os.PathLike | Mapping[str, torch.Tensor]
Detector = Callable[[Mapping[str, tuple[int, ...]], str], "Identity | None"]


@dataclass(frozen=True)
class System:
    name: str
    detect: Detector
    load: Callable[..., ControlModel] | None = None   # (state_dict, name, **options) -> ControlModel; None: not run


# Loaders share one signature: (state_dict, name, *, companion, companion_kind, base_unet, variant,
# global_average_pooling, dtype, device, operations, compute_dtype). Options a system has no use for
# are refused, not ignored.

def _load_controlnet(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling,
                     **options):
    _refuse_extras(name, "ControlNet", companion=companion, variant=variant)
    if global_average_pooling is None:  # the state dict reaches the loader without its file name
        global_average_pooling = pools_by_source(name)
    return controlnet.load_controlnet(state, base_unet=base_unet, global_average_pooling=global_average_pooling,
                                      **options)


def _load_t2i(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling, **options):
    _refuse_extras(name, "T2I-Adapter", companion=companion, variant=variant, base_unet=base_unet,
                   global_average_pooling=global_average_pooling)
    return t2i_adapter.load_t2i_adapter(state, **options)


def _load_controlnext(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling,
                      **options):
    _refuse_extras(name, "ControlNeXt", base_unet=base_unet, global_average_pooling=global_average_pooling)
    return controlnext.load_controlnext(state, unet_weights=companion, unet_weights_kind=companion_kind,
                                        variant=variant, **options)


def _load_union(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling, **options):
    _refuse_extras(name, "Union ControlNet", companion=companion, variant=variant, base_unet=base_unet,
                   global_average_pooling=global_average_pooling)
    return union.load_union(state, source=name, **options)


def _load_control_lora(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling,
                       **options):
    _refuse_extras(name, "Control-LoRA", companion=companion, variant=variant,
                   global_average_pooling=global_average_pooling)
    return control_lora.load_control_lora(state, base_unet=base_unet, **options)


def _load_lllite(state, name, *, companion, companion_kind, base_unet, variant, global_average_pooling, **options):
    _refuse_extras(name, "LLLite", companion=companion, variant=variant, base_unet=base_unet,
                   global_average_pooling=global_average_pooling)
    return lllite.load_lllite(state, **options)


def _refuse_extras(name: str, system: str, **given) -> None:
    if given.get("companion") is not None:
        raise CheckpointError(f"{name} is a {system}, which takes no companion weight file; only ControlNeXt modules "
                              "ship UNet weights beside them")
    if given.get("variant") is not None:
        raise CheckpointError(f"{name} is a {system}: `variant` applies to ControlNeXt modules only")
    if given.get("global_average_pooling") is not None:
        raise CheckpointError(f"{name} is a {system}: global average pooling applies to ControlNets only (shuffle)")
    if given.get("base_unet") is not None:
        raise CheckpointError(f"{name} is a {system}, which is not built from the base model's weights: the base model "
                              "is for 'diff' ControlNets")


SYSTEMS: tuple[System, ...] = (
    System("HunyuanDiT ControlNet", foreign.hunyuan_dit),
    System("Control-LoRA", control_lora.detect, _load_control_lora),
    System("Union", union.detect, _load_union),
    System("LLLite", lllite.detect, _load_lllite),
    System("DiT ControlNets", foreign.dit_controlnets),
    System("ControlNeXt", controlnext.detect, _load_controlnext),
    System("ControlNet", controlnet.detect, _load_controlnet),
    System("T2I-Adapter", t2i_adapter.detect, _load_t2i),
    System("Stable Cascade ControlNet", foreign.stable_cascade),
)


def _source_name(source: Source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def detect(shapes: Mapping[str, tuple[int, ...]], source: str = "state dict") -> tuple[System, Identity] | None:
    """The first system of the table that recognises these keys, with its Identity; None if none."""
    for system in SYSTEMS:
        identity = system.detect(shapes, source)
        if identity is not None:
            return system, identity
    return None


def _unknown(shapes: Mapping[str, tuple[int, ...]], name: str) -> CheckpointError:
    if any(k.startswith("model.diffusion_model.") for k in shapes):
        return CheckpointError(f"{name} is a Stable Diffusion model checkpoint (UNet weights under "
                               "'model.diffusion_model.'), not a control model: put it in models/checkpoints")
    sample = ", ".join(sorted(shapes)[:6]) or "no keys at all"
    known = ", ".join(s.name for s in SYSTEMS)
    return CheckpointError(f"{name}: not a control model this pack knows ({known}); found {len(shapes)} keys "
                           f"such as {sample}")


def identify(source: Source) -> Identity:
    """What a control file (or state dict) is: system, variant, layout, base family, and whether
    this pack runs it. Reads no tensor data from .safetensors files."""
    name = _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        shapes_and_dtypes = read_tensor_shapes(source)
    else:
        shapes_and_dtypes = {k: (tuple(v.shape), v.dtype) for k, v in source.items()}
    shapes = {k: s for k, (s, _) in shapes_and_dtypes.items()}
    found = detect(shapes, name)
    if found is None:
        raise _unknown(shapes, name)
    _, identity = found
    dtypes = Counter(d for _, d in shapes_and_dtypes.values() if d.is_floating_point)
    generic = {"parameters": sum(math.prod(s) for s in shapes.values()),
               "dtype": str(dtypes.most_common(1)[0][0]).replace("torch.", "") if dtypes else "unknown"}
    if isinstance(source, (str, os.PathLike)):
        generic["file size"] = f"{Path(source).stat().st_size / 2 ** 20:.1f} MiB"
    return replace(identity, details={**identity.details, **generic})


def load_control(source: Source, *, companion: Source | None = None, companion_kind: str = "auto",
                 base_unet: Mapping[str, torch.Tensor] | None = None, variant: str | None = None,
                 global_average_pooling: bool | None = None, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", operations=default_operations,
                 compute_dtype: torch.dtype | None = None) -> ControlModel:
    """Any control model the pack runs, from a file or state dict.

    companion: a ControlNeXt module's UNet weight subset (companion_kind "auto", "delta" or
    "full"); base_unet: the base UNet's state dict, for diff ControlNets (`identify(...).needs_base_model`)
    and Control-LoRA (which can also take it later, per run: ControlModel.use_base_unet); variant: force
    a ControlNeXt variant ("sdxl", "sd15", "sd15_old"); global_average_pooling: force a ControlNet's
    pooling (shuffle) on or off, None = by its diffusers config.json or file name; dtype: storage dtype (default the file's);
    operations / compute_dtype: see controlnet_core.ops."""
    name = _source_name(source)
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{name}: expected a non-empty state dict of tensors, found {type(state).__name__}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = detect(shapes, name)
    if found is None:
        raise _unknown(shapes, name)
    system, identity = found
    if system.load is None or not identity.runs_here:
        raise CheckpointError(f"{name} is a {identity.title}, which this pack does not run: {identity.advice}")
    model = system.load(state, name, companion=companion, companion_kind=companion_kind, base_unet=base_unet,
                        variant=variant, global_average_pooling=global_average_pooling, dtype=dtype, device=device,
                        operations=operations,
                        compute_dtype=compute_dtype)
    model.source = name
    return model
