"""T2I-Adapter checkpoint layouts: diffusers → original key names, and the config from tensor shapes.

Original (TencentARC .pth, optionally under `adapter.`):
  full/XL  conv_in, body.{level·R + j}.{block1, block2, in_conv?, down_opt.op?}
  light    body.{level}.{in_conv, body.{j}.block1/2, out_conv}
diffusers (`T2IAdapter`, keys under `adapter.`):
  full/XL  conv_in, body.{level}.resnets.{j}.block1/2, body.{level}.in_conv
  light    body.{level}.{in_conv, resnets.{j}.block1/2, out_conv}
R (residual blocks per level) is 2 in every released full adapter; diffusers files state it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from ..errors import CheckpointError
from .config import FULL, LIGHT, SD_UNSHUFFLE, XL_UNSHUFFLE, T2IAdapterConfig

Value = TypeVar("Value")
ORIGINAL_PREFIX = "adapter."
RELEASED_RES_BLOCKS = 2
# XL's hard-wired structure: level 1 widens without downsampling, level 2 downsamples.
XL_DOWNSAMPLE = (False, False, True, False)
XL_CIN = (256, 768)  # 1 or 3 image channels after PixelUnshuffle(16)

_DIFFUSERS_RESNET = re.compile(r"^adapter\.body\.(\d+)\.resnets\.(\d+)\.(block1|block2)\.(weight|bias)$")
_DIFFUSERS_LEVEL = re.compile(r"^adapter\.body\.(\d+)\.(in_conv|out_conv)\.(weight|bias)$")
_BODY_INDEX = re.compile(r"^body\.(\d+)\.")
_LIGHT_BLOCK = re.compile(r"^body\.0\.body\.(\d+)\.block1\.weight$")


def is_diffusers_layout(keys) -> bool:
    return any(_DIFFUSERS_RESNET.match(k) for k in keys)


def is_light(keys) -> bool:
    """Light adapters have an out_conv per level (both layouts, once `adapter.` is stripped)."""
    return any(k.endswith("body.0.out_conv.weight") for k in keys)


def diffusers_to_original(state_dict: Mapping[str, Value], source: str = "state dict") -> tuple[dict[str, Value], int]:
    """Rename a diffusers T2IAdapter state dict to the original names; also returns R."""
    light = is_light(state_dict)
    res_blocks = {int(m.group(2)) for k in state_dict if (m := _DIFFUSERS_RESNET.match(k)) and m.group(1) == "0"}
    per_level = len(res_blocks)
    out: dict[str, Value] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("adapter.conv_in.") and not light:
            new = key[len(ORIGINAL_PREFIX):]
        elif match := _DIFFUSERS_RESNET.match(key):
            level, j, block, param = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            new = f"body.{level}.body.{j}.{block}.{param}" if light else f"body.{level * per_level + j}.{block}.{param}"
        elif match := _DIFFUSERS_LEVEL.match(key):
            level, conv, param = int(match.group(1)), match.group(2), match.group(3)
            if light:
                new = f"body.{level}.{conv}.{param}"
            elif conv == "in_conv":
                new = f"body.{level * per_level}.in_conv.{param}"
            else:
                new = None
        else:
            new = None
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} diffusers T2I-Adapter key(s) have no original equivalent "
                              f"(unsupported variant): {', '.join(sorted(unknown)[:8])}")
    return out, per_level


def strip_prefix(state_dict: Mapping[str, Value]) -> dict[str, Value]:
    """Original files saved from a wrapper carry `adapter.` (the reference loader strips it too)."""
    if all(k.startswith(ORIGINAL_PREFIX) for k in state_dict):
        return {k[len(ORIGINAL_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise CheckpointError(f"{source}: missing tensor {key!r} (truncated, or not a T2I-Adapter)") from None


def infer_config(shapes: Mapping[str, tuple[int, ...]], source: str = "state dict",
                 num_res_blocks: int | None = None) -> T2IAdapterConfig:
    """The config of an original-layout adapter from key → shape. `num_res_blocks` (R) is known for
    diffusers files; original full files use the released R = 2."""
    keys = list(shapes)
    if is_light(keys):
        levels = sorted({int(m.group(1)) for k in keys if (m := re.match(r"^body\.(\d+)\.out_conv\.weight$", k))})
        per_level = num_res_blocks or len({m.group(1) for k in keys if (m := _LIGHT_BLOCK.match(k))})
        cin = _shape(shapes, "body.0.in_conv.weight", source)[1]
        if cin % (SD_UNSHUFFLE ** 2):
            raise CheckpointError(f"{source}: light adapter input width {cin} is not a multiple of {SD_UNSHUFFLE ** 2}")
        channels = tuple(_shape(shapes, f"body.{i}.out_conv.weight", source)[0] for i in levels)
        return T2IAdapterConfig(LIGHT, cin // SD_UNSHUFFLE ** 2, SD_UNSHUFFLE, channels,
                                (False,) + (True,) * (len(channels) - 1), per_level)
    cin = _shape(shapes, "conv_in.weight", source)[1]
    unshuffle = XL_UNSHUFFLE if cin in XL_CIN else SD_UNSHUFFLE
    if cin % unshuffle ** 2:
        raise CheckpointError(f"{source}: adapter input width {cin} is not a multiple of {unshuffle ** 2}")
    blocks = sorted({int(m.group(1)) for k in keys if (m := _BODY_INDEX.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise CheckpointError(f"{source}: adapter body blocks are not numbered 0..N-1 (found {blocks[:12]})")
    per_level = num_res_blocks or RELEASED_RES_BLOCKS
    if len(blocks) % per_level:
        raise CheckpointError(f"{source}: {len(blocks)} adapter blocks do not split into levels of {per_level}")
    levels = len(blocks) // per_level
    channels = tuple(_shape(shapes, f"body.{level * per_level}.block1.weight", source)[0] for level in range(levels))
    if unshuffle == XL_UNSHUFFLE:
        if levels != len(XL_DOWNSAMPLE):
            raise CheckpointError(f"{source}: an SDXL adapter has {len(XL_DOWNSAMPLE)} levels, found {levels}")
        downsample = XL_DOWNSAMPLE
    else:
        downsample = (False,) + (True,) * (levels - 1)
    if any(k.endswith(".skep.weight") for k in keys):
        raise CheckpointError(f"{source}: an adapter with 'skep' shortcut convs (sk=False) is not a released "
                              "variant and is not supported")
    ksize = _shape(shapes, "body.0.block2.weight", source)[2]
    use_conv = any(k.endswith("down_opt.op.weight") for k in keys)
    return T2IAdapterConfig(FULL, cin // unshuffle ** 2, unshuffle, channels, downsample, per_level, ksize, use_conv)
