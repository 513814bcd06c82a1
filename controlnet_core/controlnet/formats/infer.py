"""Inferring a ControlNetConfig from the tensor shapes of an original-layout state dict.

Everything but the head count is in the shapes: channels from the convs, levels
from where the downsamplers sit, transformer depth by counting blocks, projection kind from the
rank of proj_in, context width from attn2.to_k. The family decides the heads: SD1.x 8 heads,
SD2.x and SDXL 64 channels per head.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from ..config import ControlNetConfig
from ...errors import CheckpointError

CONTEXT_DIM_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_BLOCK_INDEX = re.compile(r"^input_blocks\.(\d+)\.")


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise CheckpointError(f"{source}: missing tensor {key!r} (truncated or not an original-layout ControlNet)") from None


def _count_transformer_blocks(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def infer_config(shapes: Mapping[str, tuple[int, ...]], source: str = "state dict",
                 overrides: Mapping[str, object] | None = None) -> ControlNetConfig:
    """ControlNetConfig for an original-layout ControlNet given key → shape."""
    keys = list(shapes)
    model_channels, in_channels = _shape(shapes, "input_blocks.0.0.weight", source)[:2]
    hint_channels = _shape(shapes, "input_hint_block.0.weight", source)[1]

    block_ids = sorted({int(m.group(1)) for k in keys for m in [_BLOCK_INDEX.match(k)] if m})
    if block_ids != list(range(len(block_ids))):
        raise CheckpointError(f"{source}: input_blocks are not numbered 0..N (found {block_ids}); the file is incomplete")
    channel_mult: list[int] = []
    num_res_blocks: list[int] = []
    transformer_depth: list[int] = []
    res_in_level = 0
    for index in block_ids[1:]:
        prefix = f"input_blocks.{index}."
        if prefix + "0.op.weight" in shapes:  # downsampler closes a level
            num_res_blocks.append(res_in_level)
            res_in_level = 0
            continue
        out_channels = _shape(shapes, prefix + "0.out_layers.3.weight", source)[0]
        if res_in_level == 0:
            if out_channels % model_channels:
                raise CheckpointError(f"{source}: block {index} has {out_channels} channels, not a multiple of "
                                      f"model_channels {model_channels}")
            channel_mult.append(out_channels // model_channels)
        res_in_level += 1
        has_transformer = prefix + "1.proj_in.weight" in shapes
        transformer_depth.append(_count_transformer_blocks(keys, prefix + "1.") if has_transformer else 0)
    num_res_blocks.append(res_in_level)
    if len(num_res_blocks) != len(channel_mult):
        raise CheckpointError(f"{source}: could not read the encoder levels (res blocks {num_res_blocks}, "
                              f"channel multipliers {channel_mult})")

    if "middle_block.1.proj_in.weight" in shapes:
        depth_middle = _count_transformer_blocks(keys, "middle_block.1.")
    elif "middle_block.0.in_layers.0.weight" in shapes:
        depth_middle = -1
    else:
        raise CheckpointError(f"{source}: missing the middle block (key 'middle_block.0.in_layers.0.weight')")

    context_keys = [k for k in keys if k.endswith("attn2.to_k.weight")]
    proj_keys = [k for k in keys if k.endswith(".proj_in.weight")]
    context_dim = shapes[context_keys[0]][1] if context_keys else None
    use_linear = len(shapes[proj_keys[0]]) == 2 if proj_keys else False
    adm = shapes["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in shapes else None

    if adm is not None or context_dim == 2048:
        family = "sdxl"
    elif context_dim in CONTEXT_DIM_FAMILY:
        family = CONTEXT_DIM_FAMILY[context_dim]
    else:  # unusual widths (small research models, tests): linear projection marks the SD2 generation
        family = "sd2" if use_linear else "sd1"
    if context_dim is None:
        context_dim = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    heads = {"num_heads": 8, "num_head_channels": None} if family == "sd1" else {"num_heads": None, "num_head_channels": 64}

    config = ControlNetConfig(
        family=family, in_channels=in_channels, model_channels=model_channels, hint_channels=hint_channels,
        channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth), transformer_depth_middle=depth_middle,
        context_dim=context_dim, use_linear_projection=use_linear, adm_in_channels=adm, **heads)
    if overrides:
        try:
            config = config.replace(**dict(overrides))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: bad config override: {exc}") from exc
    return config
