"""The UNet weight subset that ships beside a ControlNeXt module, as weight patches on the base UNet.

ControlNeXt fine-tunes a few UNet weights with its module (SD1.5: every attention `to_out`; SDXL:
the cross-attention `to_out`s) and releases them in diffusers names, either as full values
(`unet.safetensors` of the old SD1.5 release) or as deltas W_ft − W_pre
(`unet_weight_increasements.*`; the SDXL release's `unet.safetensors` is loaded as deltas too).
Here they become patches keyed by ldm names: ("diff", delta) or ("set", value).

Which kind a file holds is not written in it. `kind="auto"` reads the file name first
("increasement"/"increment"/"delta"/"diff"), then the magnitudes: a fine-tuned Linear weight has a
root-mean-square near 1/sqrt(fan_in), a fine-tuning delta one far smaller (median of
rms·sqrt(fan_in) below DELTA_THRESHOLD). Pass kind="delta" or "full" to decide it yourself.
"""
from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..ldm.diffusers_keys import diffusers_unet_subset_to_ldm
from ..protocol import WeightPatch

KINDS = ("auto", "delta", "full")
DELTA_NAME_HINTS = ("increasement", "increment", "delta", "diff")
DELTA_THRESHOLD = 0.1
LDM_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
DIFFUSERS_PREFIX = "unet."
LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
LAYERS_PER_BLOCK = {"sd1": (2, 2, 2, 2), "sdxl": (2, 2, 2)}
_TRANSFORMER_INDEX = re.compile(r"transformer_blocks\.(\d+)\.")


def _ldm_names(state: Mapping[str, torch.Tensor], family: str | None, source: str) -> dict[str, torch.Tensor]:
    for prefix in LDM_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    if all(k.startswith(LDM_ROOTS) for k in state):
        return dict(state)
    if all(k.startswith(DIFFUSERS_PREFIX) for k in state):
        state = {k[len(DIFFUSERS_PREFIX):]: v for k, v in state.items()}
    family = family or subset_family(state)
    if family is None:
        raise CheckpointError(f"{source}: cannot tell whether these UNet weights are for SDXL or SD1.5; "
                              "load the ControlNeXt module with the base family given")
    return diffusers_unet_subset_to_ldm(state, LAYERS_PER_BLOCK[family], f"{source} (ControlNeXt UNet weights)")


def subset_family(state: Mapping[str, object]) -> str | None:
    """SDXL's transformers are 2 and 10 blocks deep and it has no attention at 320 channels; SD1.5's
    are 1 block deep, with attention at the first level."""
    keys = list(state)
    if any(int(m.group(1)) > 0 for k in keys if (m := _TRANSFORMER_INDEX.search(k))):
        return "sdxl"
    if any(k.startswith(("down_blocks.0.attentions.", "input_blocks.1.1.", "input_blocks.2.1.")) for k in keys):
        return "sd1"
    return None


def holds_deltas(state: Mapping[str, torch.Tensor], name: str = "") -> bool:
    """Whether a subset holds deltas (True) or full values (False), by file name, then magnitudes."""
    lowered = Path(name).name.lower()
    if any(hint in lowered for hint in DELTA_NAME_HINTS):
        return True
    ratios = [float(v.float().pow(2).mean().sqrt()) * math.sqrt(v[0].numel())
              for v in state.values() if v.ndim >= 2 and v.numel() > 0]
    if not ratios:
        raise CheckpointError(f"{name or 'UNet weights'}: no weight matrices to tell deltas from full values; "
                              "say which the file holds (kind='delta' or 'full')")
    return statistics.median(ratios) < DELTA_THRESHOLD


def load_unet_subset(source: str | os.PathLike | Mapping[str, torch.Tensor], *, kind: str = "auto",
                     family: str | None = None, dtype: torch.dtype | None = None,
                     name: str | None = None) -> dict[str, WeightPatch]:
    """Weight patches (ldm names) from a ControlNeXt UNet weight file or state dict (`name`: the file
    name of a state dict read elsewhere, for the kind hint and messages)."""
    if kind not in KINDS:
        raise CheckpointError(f"ControlNeXt UNet weights kind: expected one of {KINDS}, found {kind!r}")
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "UNet weight state dict")
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    if not state:
        raise CheckpointError(f"{name}: the ControlNeXt UNet weight file holds no tensors")
    deltas = holds_deltas(state, name) if kind == "auto" else kind == "delta"
    patches = {}
    for key, value in _ldm_names(state, family, name).items():
        value = value.to(dtype) if dtype is not None and value.is_floating_point() else value
        patches[key] = ("diff" if deltas else "set", value)
    return patches
