"""diffusers layout -> original (ldm) layout key conversion.

diffusers names an ldm-style UNet encoder by block and layer (`down_blocks.1.resnets.0.conv1`); the
original ControlNet code uses flat sequential indices (`input_blocks.4.0.in_layers.2`). The model in
`controlnet_core.controlnet` uses the original names, so diffusers checkpoints are renamed here.

The renaming rules are data (the TABLES below); `_rename_key` only applies them. Layers per level
(L) are read from the keys themselves, so any depth converts: level i's j-th layer sits at
`input_blocks.{1 + sum(L_k + 1 for k < i) + j}` and its downsampler right after the last layer.
Any key no rule covers raises CheckpointError naming it, so an unsupported variant fails loudly
instead of loading with silently missing weights.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from ..errors import CheckpointError

# Values are passed through untouched: tensors when loading, shapes when describe() only reads headers.
Value = TypeVar("Value")

# Key whose presence marks a diffusers ControlNetModel state dict.
DIFFUSERS_CONTROLNET_MARKER = "controlnet_cond_embedding.conv_in.weight"

# ---------------------------------------------------------------------------------------------
# TABLES
# ---------------------------------------------------------------------------------------------

# Modules that are not inside a numbered block: diffusers module path -> ldm module path.
TOP_LEVEL_MODULES: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL's "text_time" embedding and the older "projection" class embedding both become label_emb.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "controlnet_mid_block": "middle_block_out.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
}

# Middle block: diffusers sub-module -> ldm sequential index, and whether it is a resnet.
MID_BLOCK_MODULES: dict[str, tuple[str, str]] = {
    "resnets.0": ("middle_block.0", "resnet"),
    "attentions.0": ("middle_block.1", "attention"),
    "resnets.1": ("middle_block.2", "resnet"),
}

# ResnetBlock2D sub-module -> ldm ResBlock sub-module.
RESNET_RENAMES: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# Transformer2DModel sub-modules: the ldm SpatialTransformer uses the very same names.
ATTENTION_OUTER_MODULES: frozenset[str] = frozenset({"norm", "proj_in", "proj_out"})
# BasicTransformerBlock sub-modules (inside `transformer_blocks.k.`): same names in both layouts.
TRANSFORMER_BLOCK_MODULES: frozenset[str] = frozenset({
    "norm1", "norm2", "norm3",
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
})

PARAMETER_NAMES: frozenset[str] = frozenset({"weight", "bias"})

# diffusers UNet2DConditionModel keys that belong to the decoder / output head (not the encoder).
UNET_DECODER_PREFIXES: tuple[str, ...] = ("up_blocks.", "conv_norm_out.", "conv_out.")

_DOWN_BLOCK_RE = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$")
_UP_BLOCK_RE = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_MID_BLOCK_RE = re.compile(r"^mid_block\.(resnets\.\d+|attentions\.\d+)\.(.+)$")
_ZERO_CONV_RE = re.compile(r"^controlnet_down_blocks\.(\d+)\.(weight|bias)$")
_HINT_BLOCK_RE = re.compile(r"^controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)$")
_HINT_OUT_RE = re.compile(r"^controlnet_cond_embedding\.conv_out\.(weight|bias)$")
_TRANSFORMER_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")


# ---------------------------------------------------------------------------------------------
# Logic
# ---------------------------------------------------------------------------------------------

def is_diffusers_layout(state_dict: Mapping[str, object]) -> bool:
    """True for a diffusers ControlNetModel state dict (it has a `controlnet_cond_embedding`)."""
    return DIFFUSERS_CONTROLNET_MARKER in state_dict


def _split_parameter(path: str) -> tuple[str, str] | None:
    module, _, parameter = path.rpartition(".")
    if parameter not in PARAMETER_NAMES or not module:
        return None
    return module, parameter


def _rename_resnet_suffix(suffix: str) -> str | None:
    """`conv1.weight` -> `in_layers.2.weight`; None if not a ResnetBlock2D parameter."""
    split = _split_parameter(suffix)
    if split is None or split[0] not in RESNET_RENAMES:
        return None
    return f"{RESNET_RENAMES[split[0]]}.{split[1]}"


def _rename_attention_suffix(suffix: str) -> str | None:
    """Validate a Transformer2DModel parameter path; the ldm name is identical. None if unknown."""
    split = _split_parameter(suffix)
    if split is not None and split[0] in ATTENTION_OUTER_MODULES:
        return suffix
    match = _TRANSFORMER_BLOCK_RE.match(suffix)
    if match is not None and match.group(2) in TRANSFORMER_BLOCK_MODULES:
        return suffix
    return None


def _layers_per_level(keys: list[str]) -> dict[int, int]:
    """Number of resnets in each `down_blocks.i` (diffusers' layers_per_block, per level)."""
    resnets: dict[int, set[int]] = {}
    for key in keys:
        match = _DOWN_BLOCK_RE.match(key)
        if match is not None and match.group(2) == "resnets":
            resnets.setdefault(int(match.group(1)), set()).add(int(match.group(3)))
    levels = sorted(resnets)
    if levels != list(range(len(levels))):
        raise CheckpointError(f"diffusers state dict: expected down_blocks numbered 0..n-1, found {levels}")
    layers: dict[int, int] = {}
    for level in levels:
        indices = sorted(resnets[level])
        if indices != list(range(len(indices))):
            raise CheckpointError(
                f"diffusers state dict: down_blocks.{level}.resnets are numbered {indices}, expected 0..n-1"
            )
        layers[level] = len(indices)
    return layers


def _hint_block_count(keys: list[str]) -> int:
    indices = {int(m.group(1)) for m in map(_HINT_BLOCK_RE.match, keys) if m is not None}
    return max(indices) + 1 if indices else 0


def _rename_key(key: str, layers: dict[int, int], hint_blocks: int) -> str | None:
    """The ldm name of one diffusers key, or None if no rule covers it."""
    split = _split_parameter(key)
    if split is not None and split[0] in TOP_LEVEL_MODULES:
        return f"{TOP_LEVEL_MODULES[split[0]]}.{split[1]}"

    match = _DOWN_BLOCK_RE.match(key)
    if match is not None:
        level, kind, index, suffix = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
        if level not in layers:
            return None
        first_index = 1 + sum(layers[k] + 1 for k in range(level))
        if kind == "resnets":
            renamed = _rename_resnet_suffix(suffix)
            return None if renamed is None else f"input_blocks.{first_index + index}.0.{renamed}"
        if kind == "attentions":
            if index >= layers[level]:
                return None
            renamed = _rename_attention_suffix(suffix)
            return None if renamed is None else f"input_blocks.{first_index + index}.1.{renamed}"
        # downsamplers.0.conv.* -> the block right after the level's last layer, `.0.op`
        split = _split_parameter(suffix)
        if index != 0 or split is None or split[0] != "conv":
            return None
        return f"input_blocks.{first_index + layers[level]}.0.op.{split[1]}"

    match = _UP_BLOCK_RE.match(key)
    if match is not None:
        # Up block i holds layers + 1 resnets (and attentions); output block i·(layers+1)+j holds the
        # j-th of them, resnet at `.0`, attention at `.1`. Levels mirror the encoder's, deepest first.
        level, kind, index, suffix = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
        levels = len(layers)
        if level >= levels or index > layers[levels - 1 - level]:
            return None
        first_index = sum(layers[levels - 1 - k] + 1 for k in range(level))
        renamed = _rename_resnet_suffix(suffix) if kind == "resnets" else _rename_attention_suffix(suffix)
        return None if renamed is None else f"output_blocks.{first_index + index}.{0 if kind == 'resnets' else 1}.{renamed}"

    match = _MID_BLOCK_RE.match(key)
    if match is not None:
        module, suffix = match.group(1), match.group(2)
        if module not in MID_BLOCK_MODULES:
            return None
        target, kind = MID_BLOCK_MODULES[module]
        renamed = _rename_resnet_suffix(suffix) if kind == "resnet" else _rename_attention_suffix(suffix)
        return None if renamed is None else f"{target}.{renamed}"

    match = _ZERO_CONV_RE.match(key)
    if match is not None:
        return f"zero_convs.{match.group(1)}.0.{match.group(2)}"

    # Hint embedding: conv_in, blocks.k, conv_out are the convs of input_hint_block, SiLU between.
    match = _HINT_BLOCK_RE.match(key)
    if match is not None:
        return f"input_hint_block.{2 * (int(match.group(1)) + 1)}.{match.group(2)}"
    match = _HINT_OUT_RE.match(key)
    if match is not None:
        return f"input_hint_block.{2 * (hint_blocks + 1)}.{match.group(1)}"
    return None


def _convert(state_dict: Mapping[str, Value], keys: list[str], what: str,
             layers: dict[int, int] | None = None) -> dict[str, Value]:
    layers = layers or _layers_per_level(keys)
    hint_blocks = _hint_block_count(keys)
    converted: dict[str, Value] = {}
    unknown: list[str] = []
    sources: dict[str, str] = {}
    for key in keys:
        new_key = _rename_key(key, layers, hint_blocks)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in converted:
            raise CheckpointError(f"{what}: keys {sources[new_key]!r} and {key!r} both map to {new_key!r}")
        converted[new_key] = state_dict[key]
        sources[new_key] = key
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (" ..." if len(unknown) > 12 else "")
        raise CheckpointError(
            f"{what}: {len(unknown)} key(s) have no known ldm equivalent "
            f"(unsupported variant or not a ControlNet of an ldm-style UNet): {shown}"
        )
    return converted


def diffusers_to_ldm(state_dict: Mapping[str, Value]) -> dict[str, Value]:
    """Rename a diffusers ControlNetModel state dict to the original ControlNet key names.

    Values (tensors, or shapes) are not copied. Raises CheckpointError naming every key that has no mapping.
    """
    if not is_diffusers_layout(state_dict):
        raise CheckpointError(
            f"diffusers ControlNet state dict: expected key {DIFFUSERS_CONTROLNET_MARKER!r}, not found "
            f"(first keys: {', '.join(list(state_dict)[:5])})"
        )
    return _convert(state_dict, list(state_dict), "diffusers ControlNet state dict")


def diffusers_unet_encoder_to_ldm(unet_state_dict: Mapping[str, Value]) -> dict[str, Value]:
    """Rename the encoder half of a diffusers UNet2DConditionModel state dict to ldm names.

    Keeps conv_in, time/add embedding, down_blocks and mid_block; drops the decoder (up_blocks,
    conv_norm_out, conv_out). Raises CheckpointError for any other key without a mapping.
    """
    if "conv_in.weight" not in unet_state_dict or not any(k.startswith("down_blocks.") for k in unet_state_dict):
        raise CheckpointError(
            "diffusers UNet state dict: expected keys 'conv_in.weight' and 'down_blocks.*', "
            f"found first keys: {', '.join(list(unet_state_dict)[:5])}"
        )
    keys = [k for k in unet_state_dict if not k.startswith(UNET_DECODER_PREFIXES)]
    controlnet_only = [k for k in keys if k.startswith(("controlnet_", "zero_convs", "input_hint_block"))]
    if controlnet_only:
        raise CheckpointError(
            f"diffusers UNet state dict: found ControlNet keys ({', '.join(controlnet_only[:5])}); "
            "pass a UNet2DConditionModel state dict, or load a ControlNet with load_controlnet"
        )
    return _convert(unet_state_dict, keys, "diffusers UNet state dict")


def diffusers_unet_subset_to_ldm(state_dict: Mapping[str, Value], layers_per_block: Sequence[int] = (2, 2, 2, 2),
                                 what: str = "diffusers UNet weights") -> dict[str, Value]:
    """Rename some weights of a diffusers UNet2DConditionModel (any subset: encoder, middle or
    decoder resnets and attentions) to ldm names. A subset may lack the resnets the level structure
    is read from, so `layers_per_block` states it (2 per level in SD1.x/SD2.x, whose 4 levels it
    defaults to, and SDXL's 3). Raises CheckpointError naming every key without a mapping."""
    layers = dict(enumerate(layers_per_block))
    return _convert(state_dict, list(state_dict), what, layers)
