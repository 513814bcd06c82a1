"""ControlNeXt (dvlab-research): a tiny module whose cross-normalised feature is added to the UNet's
stream after one block, plus a fine-tuned subset of UNet weights (see model.py, unet_subset.py)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch

from ..building import build_model
from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..identity import Identity
from ..ops import default_operations
from .config import MODULE_A, MODULE_A_CONFIG, MODULE_B_CONFIG, SD15, SD15_OLD, SDXL, VARIANT_FAMILIES, VARIANTS, \
    ControlNeXtConfig
from .model import ControlNeXtModel, cross_normalize
from .unet_subset import load_unet_subset, subset_family

MARKER = "mid_convs.1.weight"
UNET_SUBSET_ADVICE = ("this is the UNet weight subset that ships beside a ControlNeXt module; load the module file "
                      "(controlnet.safetensors) and give this file as its UNet weights (LoadControlNet's second input)")
SVD_ADVICE = "ControlNeXt for Stable Video Diffusion runs on an SVD UNet, which this pack does not drive"


def _module_config(shapes: Mapping[str, tuple[int, ...]]) -> ControlNeXtConfig | None:
    if MARKER not in shapes:
        return None
    if "scale" in shapes or "down_res.2.conv1.weight" in shapes or shapes[MARKER][0] == MODULE_B_CONFIG.final_out_channels:
        return MODULE_B_CONFIG
    if "embedding.0.weight" in shapes:
        # The feature's width is read from the file: 320 in the releases, the base's first-level
        # width for modules trained here on other UNets (controlnet_core.train).
        return dataclasses.replace(MODULE_A_CONFIG, final_out_channels=shapes[MARKER][0])
    return None


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    config = _module_config(shapes)
    if config is None:
        if shapes and all("to_out" in k for k in shapes):
            return Identity("ControlNeXt", "UNet weight subset", "diffusers" if any(
                k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "unet.")) for k in shapes) else "ldm",
                subset_family(shapes), runs_here=False, advice=UNET_SUBSET_ADVICE)
        return None
    if config.module == MODULE_A:
        return Identity("ControlNeXt", "SDXL / SD1.5 module (variant from the base model)", "original", None,
                        details={"feature": "320 channels at the latent size",
                                 "enters": "SDXL: after conv_in; SD1.5: after the first down block"})
    return Identity("ControlNeXt", "SD1.5 (old inference module)", "original", "sd1",
                    details={"feature": "1280 channels at the latent size", "enters": "after the middle block",
                             "scale": "learned, stored in the file"})


def load_controlnext(source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                     unet_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                     unet_weights_kind: str = "auto", variant: str | None = None, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu", operations=default_operations,
                     compute_dtype: torch.dtype | None = None) -> ControlNeXtModel:
    """A ControlNeXt module from a file or state dict, with its optional UNet weight subset.

    variant: "sdxl", "sd15" or "sd15_old"; by default the file decides (module B is the old SD1.5
    module), then the UNet subset's family, then the base model at sampling time (module A serves
    SDXL and SD1.5). unet_weights_kind: "auto", "delta" or "full" (see unet_subset.py)."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    config = _module_config({k: tuple(v.shape) for k, v in state.items()})
    if config is None:
        raise CheckpointError(f"{name} is not a ControlNeXt control module (no {MARKER!r} with 'embedding.*' or "
                              "'scale'); a file of only `to_out` weights is the UNet subset: " + UNET_SUBSET_ADVICE)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"ControlNeXt variant: expected one of {VARIANTS}, found {variant!r}")
    if config.module != MODULE_A and variant not in (None, SD15_OLD):
        raise CheckpointError(f"{name} is the old SD1.5 ControlNeXt module; it cannot run as {variant!r}")
    patches = {}
    if unet_weights is not None:
        is_path = isinstance(unet_weights, (str, os.PathLike))
        unet_name = str(unet_weights) if is_path else "UNet weight state dict"
        unet_state = read_state_dict(unet_weights) if is_path else dict(unet_weights)
        found = subset_family(unet_state)
        if variant is None and config.module == MODULE_A and found is not None:
            variant = {"sdxl": SDXL, "sd1": SD15}[found]
        family = VARIANT_FAMILIES[variant] if variant else VARIANT_FAMILIES.get(config.variant)
        if found is not None and family is not None and found != family:
            raise CheckpointError(f"{unet_name} holds {found} UNet weights but {name} runs as {family}: "
                                  "the module and its UNet weights come from different releases")
        patches = load_unet_subset(unet_state, kind=unet_weights_kind, family=family, name=unet_name)
    if variant is not None and variant != config.variant:
        config = ControlNeXtConfig(**{**config.__dict__, "variant": variant})
    model = build_model(lambda dt: ControlNeXtModel(config, dtype=dt, operations=operations, compute_dtype=compute_dtype),
                        state, source=name, what="ControlNeXt module", dtype=dtype, device=device)
    model.unet_patches = patches
    model.source = name
    return model


__all__ = ["ControlNeXtConfig", "ControlNeXtModel", "cross_normalize", "detect", "load_controlnext",
           "load_unet_subset"]
