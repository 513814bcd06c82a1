"""Host-independent pieces of the node layer: the per-entry settings a node collects, and the
translation of a controlnet_core Contribution into what the host's UNet reads.

Nothing here imports ComfyUI, so CI tests it directly. `control_object.py` and
`controlnet_nodes.py` build on it inside the host.

What the host's UNet (ComfyUI's openaimodel) reads, per call:
- control["output"]: popped from the end as the decoder reads each skip, so entry i is added to
  skip i (the output of input block i);
- control["middle"]: added after the middle block;
- control["input"]: popped from the end after every input block and added in place before the
  skip is stored, so entry n-1-k is added after input block k;
- transformer_options["patches"]["input_block_patch_after_skip"] / ["output_block_patch"]:
  functions of the hidden state, called after skip k is stored and at each output block;
- transformer_options["patches"]["attn1_patch"] / ["attn2_patch"]: the inputs of the attention
  projections of each transformer block, before they are read.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..controlnet_core import ControlNetError, InputError
from ..controlnet_core.fast import speed_mode
from ..controlnet_core.hint import RESIZE_MODES, as_image_batch
from ..controlnet_core.modes import MODE_BALANCED, check_mode
from ..controlnet_core.protocol import Contribution, UNetLayout

AFTER_SKIP_PATCH = "input_block_patch_after_skip"
OUTPUT_BLOCK_PATCH = "output_block_patch"


@dataclass(frozen=True, eq=False)
class ControlUnit:
    """One entry of a stack as the user set it in a node: which control, which image, how much.

    `net` is a `LoadedControl` (see control_object.py) or, for a host object the core cannot run,
    that host object itself. `image` is a ComfyUI IMAGE (B×H×W×C in [0, 1]). Units compare by
    identity: the same unit reaching a node twice is the same entry applied twice."""

    net: Any
    image: torch.Tensor
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: torch.Tensor | None = None
    mode: str = MODE_BALANCED
    label: str = ""
    resize_mode: str = "crop_and_resize"
    speed_mode: str = "exact"                 # controlnet_core.fast.SPEED_MODES: exact, or a fast (inexact) mode
    weights: Any = None                      # a controlnet_core ControlWeights (per-block weights node)
    keyframes: Any = None                    # a controlnet_core KeyframeGroup (keyframe / curve nodes)
    frame_indices: tuple[int, ...] | None = None  # sparse control: latent frame of each control frame

    def __post_init__(self) -> None:
        name = self.label or "ControlNet entry"
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 4:
            found = tuple(self.image.shape) if isinstance(self.image, torch.Tensor) else type(self.image).__name__
            raise InputError(f"{name}: image must be a ComfyUI IMAGE (batch×height×width×channels), found {found}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise InputError(
                f"{name}: expected 0 ≤ start_percent ≤ end_percent ≤ 1, found start {self.start}, end {self.end}")
        as_image_batch(self.image, f"{name}: control image")  # refuse an empty, tiny or NaN image now, not mid-run
        check_mode(self.mode)
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"{name}: resize_mode: expected one of {list(RESIZE_MODES)}, found {self.resize_mode!r}")
        try:
            speed_mode(self.speed_mode)
        except InputError as error:
            raise InputError(f"{name}: {error}") from None
        # Mask size and batch are checked by controlnet_core (prepare_mask) against the image and the
        # generation size, which is only known at sampling time.


def host_control_dict(contribution: Contribution, num_input_blocks: int) -> dict[str, list]:
    """The host's control dict for a Contribution (lists only for what it holds)."""
    out: dict[str, list] = {}
    if contribution.skips:
        out["output"] = [contribution.skips.get(i) for i in range(num_input_blocks)]
    if contribution.middle is not None:
        out["middle"] = [contribution.middle]
    if contribution.encoder:
        encoder = [None] * num_input_blocks
        for block, tensor in contribution.encoder.items():
            encoder[num_input_blocks - 1 - block] = tensor
        out["input"] = encoder
    return out


def stream_patches(contribution: Contribution) -> dict[str, list[Callable]]:
    """Host transformer patches that add the contribution's stream functions at their points."""
    patches: dict[str, list[Callable]] = {}
    points = {point for point in contribution.stream if point is not None}
    if points:
        def after_skip(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
            kind, index = transformer_options.get("block", (None, None))
            if kind == "input" and index in points:
                h = h + contribution.stream_addition(index, h).to(h.dtype)
            return h

        patches[AFTER_SKIP_PATCH] = [after_skip]
    if None in contribution.stream:
        def after_middle(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
            if transformer_options.get("block") == ("output", 0):  # h is still the middle block's output
                h = h + contribution.stream_addition(None, h).to(h.dtype)
            return h, hsp

        patches[OUTPUT_BLOCK_PATCH] = [after_middle]
    return patches


ATTN1_PATCH, ATTN2_PATCH = "attn1_patch", "attn2_patch"


def attention_patches(contribution: Contribution) -> dict[str, list[Callable]]:
    """Host attn1/attn2 patches that add the contribution's attention-input functions (LLLite).

    The host calls `patch(n, context_attn1, value_attn1, extra_options)` before self-attention,
    where all three start as the block's normed hidden state and become the inputs of to_q, to_k
    and to_v; `patch(n, context_attn2, value_attn2, extra_options)` before cross-attention, where
    only n (to_q's input) is shifted. extra_options names the block ("input", k) / ("middle", 0)
    and the transformer block index."""
    if not contribution.attention:
        return {}

    def shifted(tensor, key):
        added = contribution.attention_addition(key, tensor)
        return tensor if added is None else tensor + added.to(tensor.dtype)

    def attn1(n, context, value, extra_options):
        block = extra_options.get("block")
        if block is None:
            return n, context, value
        where = (tuple(block), extra_options.get("block_index", 0))
        return (shifted(n, (*where, "attn1.to_q")), shifted(context, (*where, "attn1.to_k")),
                shifted(value, (*where, "attn1.to_v")))

    def attn2(n, context, value, extra_options):
        block = extra_options.get("block")
        if block is None:
            return n, context, value
        return shifted(n, (tuple(block), extra_options.get("block_index", 0), "attn2.to_q")), context, value

    return {ATTN1_PATCH: [attn1], ATTN2_PATCH: [attn2]}


def add_transformer_patches(transformer_options: dict, patches: dict[str, list[Callable]]) -> None:
    """Add `patches` to this call's transformer options without touching lists the host may share
    with the model's own options (the dicts and lists are replaced, never mutated)."""
    if not patches:
        return
    merged = dict(transformer_options.get("patches", {}))
    for name, functions in patches.items():
        merged[name] = list(merged.get(name, [])) + list(functions)
    transformer_options["patches"] = merged


def check_contribution(names: str, layout: UNetLayout | None, contribution: Contribution, x: torch.Tensor) -> None:
    """Last line of defence at every call: each tensor must add onto the UNet tensor it targets (the
    host only logs 'control could not be applied' and goes on uncontrolled)."""
    if layout is None:
        return
    batch, (height, width) = x.shape[0], x.shape[-2:]
    expected = {("skip", i): (c, d) for i, (c, d) in enumerate(zip(layout.block_channels, layout.block_downscale))}
    items = [(("skip", i), t) for i, t in contribution.skips.items()]
    items += [(("skip", k), t) for k, t in contribution.encoder.items()]  # the stream there has the skip's shape
    if contribution.middle is not None:
        expected[("middle", 0)] = (layout.middle_channels, layout.block_downscale[-1])
        items.append((("middle", 0), contribution.middle))
    for where, tensor in items:
        if where not in expected:
            raise ControlNetError(f"{names} add to {where[0]} {where[1]}, which {layout.name} does not have "
                                  f"({layout.num_input_blocks} input blocks)")
        channels, downscale = expected[where]
        size = (-(-height // downscale), -(-width // downscale))
        if tensor.shape[0] != batch or tensor.shape[1] != channels or tuple(tensor.shape[-2:]) != size:
            raise ControlNetError(
                f"{names} give a tensor of shape {tuple(tensor.shape)} for {where[0]} {where[1]}, but {layout.name} "
                f"expects batch {batch}, {channels} channels and {size[0]}×{size[1]} there (latent {height}×{width})")


def sum_controls(first: dict | None, second: dict | None) -> dict | None:
    """Elementwise sum of two host control dicts ({'input'|'middle'|'output': [tensor|None]}).

    Lists are aligned at their ends, because the UNet pops them from the end: a list that is longer
    (the host's SDXL T2I-Adapter carries one unused leading slot) still meets the right block."""
    if first is None:
        return second
    if second is None:
        return first
    merged: dict[str, list] = {}
    for key in set(first) | set(second):
        a, b = list(first.get(key, [])), list(second.get(key, []))
        length = max(len(a), len(b))
        a = [None] * (length - len(a)) + a
        b = [None] * (length - len(b)) + b
        merged[key] = [x if y is None else y if x is None else x + y for x, y in zip(a, b)]
    return merged


def percent_of_sigma(sigma: float, percent_to_sigma: Callable[[float], float], low: float = 0.0,
                     high: float = 1.0, iterations: int = 40) -> float:
    """The schedule percent whose sigma is `sigma`, by bisection on the host's (decreasing)
    percent_to_sigma between `low` and `high`: places a step inside an interpolated keyframe segment."""
    sigma = float(sigma)
    for _ in range(iterations):
        middle = (low + high) / 2
        if float(percent_to_sigma(middle)) > sigma:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def sigma_in_range(sigma: "torch.Tensor | float", sigma_start: float, sigma_end: float) -> bool:
    """The host's step-range test: a control is on unless sigma > sigma(start) or sigma < sigma(end)."""
    return not bool(sigma > sigma_start or sigma < sigma_end)
