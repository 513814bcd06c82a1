"""The control-system protocol: what one control adds to one UNet call, and where.

Every loaded control (a ControlNet, a T2I-Adapter, a ControlNeXt module…) is a torch module that
subclasses `ControlModel`. The stack (stack.py) and the nodes know nothing else about it:

- `hint_spec(h, w)`: the size, channels and value range its control image must have for a latent
  of h×w;
- `prepare(hint)`: the work that depends only on the control image, done once per run and cached
  by the stack (the ControlNet hint block, the T2I-Adapter features);
- `additions(call, prepared, frames)`: what it adds to this UNet call, as `Addition`s, each tagged
  with one of its `slots` (the unit that per-slot weights and control modes scale);
- `unet_weight_patches()`: UNet weights it shifts or replaces while it is applied (ControlNeXt);
- `use_base_unet(weights)`: for controls built from the base UNet's own weights (Control-LoRA);
- `check_fits(layout)`: refuse a base UNet it was not made for, naming both;
- `fusion_key()` / `fused_additions(call, members)` (optional): entries whose models give the same
  key run in one forward of the model they share (several Union control types in one pass).

Where an addition goes (`Target`) uses the ldm UNet's numbering (input blocks 0…N-1, then the
middle block, then the output blocks, which read the skips back deepest first):

- `Target.skip(i)`: added to skip connection i when the decoder reads it (ControlNet residuals);
- `Target.middle()`: added to the middle block's output;
- `Target.encoder(k)`: added to the hidden state right after input block k, before skip k is
  stored, so the skip and every later block see it (T2I-Adapter features);
- `Target.stream(k)` / `Target.stream_middle()`: a *function of the hidden state* at that point,
  whose result is added to the stream after skip k was stored (skip untouched), or after the middle
  block and its residuals (ControlNeXt's cross-normalised feature);
- `Target.attention(k, t, projection)`: a function of the tokens a projection of transformer block t
  inside input block k (None: the middle block) reads, whose result is added to that projection's
  input ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q"; LLLite). Tokens are B×N×C, N the
  block's h×w in row-major order.

A tensor addition has the batch of the rows being controlled; a stream addition is a callable
`hidden_state_rows -> tensor` that the stack evaluates when the UNet reaches that point.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import ControlNetError

SKIP, MIDDLE, ENCODER, STREAM, STREAM_MIDDLE = "skip", "middle", "encoder", "stream", "stream_middle"
ATTENTION = "attention"
ATTENTION_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")


@dataclass(frozen=True)
class Target:
    kind: str
    block: int | None = None
    part: tuple | None = None   # attention targets: (transformer block index, projection)

    @classmethod
    def skip(cls, index: int) -> "Target":
        return cls(SKIP, index)

    @classmethod
    def middle(cls) -> "Target":
        return cls(MIDDLE)

    @classmethod
    def encoder(cls, block: int) -> "Target":
        return cls(ENCODER, block)

    @classmethod
    def stream(cls, block: int) -> "Target":
        return cls(STREAM, block)

    @classmethod
    def stream_middle(cls) -> "Target":
        return cls(STREAM_MIDDLE)

    @classmethod
    def attention(cls, block: int | None, transformer: int, projection: str) -> "Target":
        """The input of `projection` in transformer block `transformer` of input block `block`
        (None: the middle block)."""
        if projection not in ATTENTION_PROJECTIONS:
            raise ValueError(f"attention projection: expected one of {ATTENTION_PROJECTIONS}, found {projection!r}")
        return cls(ATTENTION, block, (int(transformer), projection))

    @property
    def attention_key(self) -> tuple:
        """(("input", k) or ("middle", 0), transformer index, projection): the host's block naming."""
        unet_block = ("middle", 0) if self.block is None else ("input", self.block)
        return (unet_block, *self.part)

    def __str__(self) -> str:
        if self.kind == ATTENTION:
            where = "middle" if self.block is None else f"input {self.block}"
            return f"attention {where} transformer {self.part[0]} {self.part[1]}"
        return self.kind if self.block is None else f"{self.kind} {self.block}"


StreamFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Addition:
    """One thing a control adds: `value` (a tensor, or a StreamFunction for stream targets) at
    `target`, scaled by the weight of `slot`."""

    target: Target
    slot: int
    value: torch.Tensor | StreamFunction


@dataclass(frozen=True)
class HintSpec:
    """How a control image must look for one model at one latent size."""

    height: int
    width: int
    channels: int
    gray: str = "luma"                 # how RGB becomes 1 channel: "luma" (ITU-R 601) or "mean" (the host's T2I)
    value_range: tuple[float, float] = (0.0, 1.0)


@dataclass
class UNetCall:
    """The inputs of one UNet call, for the rows that receive control.

    x: B×C×h×w latent as the UNet sees it (input scaling applied); timesteps: B; context:
    B×tokens×dim (or batch 1); y: B×adm or None."""

    x: torch.Tensor
    timesteps: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None = None
    layout: "UNetLayout | None" = None   # the base UNet, when the caller knows it (else the family's standard)

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])


@dataclass(frozen=True)
class UNetLayout:
    """What a control needs to know about the base UNet it feeds (ldm numbering).

    block_channels[k] / block_downscale[k]: channels and spatial downscale (vs the latent) of input
    block k's output, which is also skip k."""

    block_channels: tuple[int, ...]
    block_downscale: tuple[int, ...]
    middle_channels: int
    context_dim: int | None
    adm_in_channels: int | None
    family: str | None = None
    name: str = "the base model"

    @property
    def num_input_blocks(self) -> int:
        return len(self.block_channels)

    @classmethod
    def from_unet_config(cls, config: Mapping[str, Any], name: str = "the base model") -> "UNetLayout | None":
        """From the host's `unet_config` (model_channels, channel_mult, num_res_blocks, context_dim,
        adm_in_channels); None when it is not an ldm-style UNet."""
        try:
            model_channels = int(config["model_channels"])
            channel_mult = [int(m) for m in config["channel_mult"]]
            num_res_blocks = config["num_res_blocks"]
        except (KeyError, TypeError, ValueError):
            return None
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        channels, downscale = ldm_block_layout(model_channels, channel_mult, [int(n) for n in num_res_blocks])
        context_dim = config.get("context_dim")
        adm = config.get("adm_in_channels")
        return cls(tuple(channels), tuple(downscale), channel_mult[-1] * model_channels,
                   None if context_dim is None else int(context_dim), None if adm is None else int(adm),
                   family_of(context_dim, adm), name)


def ldm_block_layout(model_channels: int, channel_mult: Sequence[int],
                     num_res_blocks: Sequence[int]) -> tuple[list[int], list[int]]:
    """(channels, downscale) of every input block of an ldm UNet encoder: conv_in, then each
    level's res blocks and its downsampler (all levels but the last)."""
    channels, downscale, factor = [model_channels], [1], 1
    for level, mult in enumerate(channel_mult):
        channels += [mult * model_channels] * num_res_blocks[level]
        downscale += [factor] * num_res_blocks[level]
        if level != len(channel_mult) - 1:
            factor *= 2
            channels.append(mult * model_channels)
            downscale.append(factor)
    return channels, downscale


def standard_layout(family: str) -> UNetLayout:
    """The released UNet of a family: SD1.x/SD2.x 320 channels × (1, 2, 4, 4), SDXL × (1, 2, 4);
    two res blocks per level."""
    if family not in ("sd1", "sd2", "sdxl"):
        raise ControlNetError(f"no standard UNet layout for family {family!r}; pass the base model's layout")
    mult = (1, 2, 4) if family == "sdxl" else (1, 2, 4, 4)
    channels, downscale = ldm_block_layout(320, mult, [2] * len(mult))
    context = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    return UNetLayout(tuple(channels), tuple(downscale), 320 * mult[-1], context, 2816 if family == "sdxl" else None,
                      family, f"a standard {family_name(family)} UNet")


def family_of(context_dim: int | None, adm_in_channels: int | None) -> str | None:
    """The Stable Diffusion generation a UNet belongs to, from its text width and size vector."""
    if context_dim == 2048 or (adm_in_channels == 2816 and context_dim in (None, 2048)):
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(context_dim)


FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def family_name(family: str | None) -> str:
    return FAMILY_NAMES.get(family, family or "unknown")


@dataclass
class FusedMember:
    """One entry of a fusion group (see ControlModel.fused_additions), for the controlled rows.

    model: the entry's own model (it carries per-entry settings such as a Union control type);
    prepared / frames: as for `additions`; strength: the entry's strength; mask: `mask(height,
    width)` gives the entry's mask for the controlled rows at that resolution (rows×1×height×width),
    or mask is None when the entry has none."""

    model: "ControlModel"
    prepared: Any
    frames: torch.Tensor
    strength: float
    mask: Callable[[int, int], torch.Tensor] | None = None


# A weight patch on the base UNet: ("diff", delta) adds, ("set", value) replaces. Keys are ldm names
# without the `diffusion_model.` prefix.
WeightPatch = tuple[str, torch.Tensor]


class ControlModel(nn.Module):
    """Base class of every loaded control. Subclasses set `system` and implement `family`, `slots`,
    `hint_spec` and `additions`; the rest has defaults."""

    system: ClassVar[str] = "control"      # common name: "ControlNet", "T2I-Adapter", "ControlNeXt"
    # Control modes: per-slot soft weights ("prompt is more important"), None where the system has none.
    soft_weights: tuple[float, ...] | None = None
    # Controls trained to act on the conditional rows only (shuffle ControlNets): the stack gives the
    # unconditional rows nothing, whatever the entry's mode and uncond_strength.
    cond_only: bool = False
    # The UNetCall fields `additions` reads per row ("x", "timesteps", "context", "y"), the control
    # image frame aside, when it computes each row on its own: rows that agree on these get identical
    # additions, so the stack computes them once (fast.py). None: no such promise, every row is computed.
    row_inputs: ClassVar[tuple[str, ...] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.source = "state dict"          # file or description, for messages
        self.compute_dtype: torch.dtype | None = None

    # ---- identity -------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The base-model family it was made for ("sd1", "sd2", "sdxl")."""
        raise NotImplementedError

    @property
    def slots(self) -> tuple[str, ...]:
        """Names of the units per-slot weights apply to, in order (e.g. 'skip 0'…'middle')."""
        raise NotImplementedError

    @property
    def variant(self) -> str:
        """A short description (layout, variant) for messages and `inspect`."""
        return self.system

    @property
    def label(self) -> str:
        return f"{self.system} {self.source!r}"

    # ---- dtype and device -------------------------------------------------------------------------
    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in: the compute dtype when weights are cast per layer, else theirs."""
        return self.compute_dtype or self.weight_dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the protocol ------------------------------------------------------------------------------
    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        """How the control image must look for a latent of this size."""
        raise NotImplementedError

    def prepare(self, hint: torch.Tensor) -> Any:
        """Work that depends only on the control image (B×C×H×W, as hint_spec says), done once per
        run. The stack caches the result; the default keeps the hint itself."""
        return hint

    def additions(self, call: UNetCall, prepared: Any, frames: torch.Tensor) -> list[Addition]:
        """What this control adds to one UNet call, at strength 1. `frames[r]` is the control-image
        frame that pairs with row r of `call` (index into the batch of `prepared`)."""
        raise NotImplementedError

    def fusion_key(self) -> Hashable | None:
        """Entries whose models give the same key (not None) run together in one forward, through
        `fused_additions`. None (the default): every entry runs on its own."""
        return None

    def fused_additions(self, call: UNetCall, members: Sequence[FusedMember]) -> list[Addition]:
        """What a group of entries sharing a fusion key adds in one forward. Each member's strength
        and mask act inside, on its own part; the stack applies the slot weights and row scales the
        group shares, and the members' combined mask, to the result."""
        raise NotImplementedError(f"{self.system} has no fused forward")

    def slot_targets(self, layout: UNetLayout | None = None) -> tuple[Target | None, ...]:
        """Where each slot adds on `layout` (else the family's standard UNet), as far as the system
        fixes it; per-block weight presets (weights.py) read this. The default reads the conventional
        slot names: 'skip i' is `Target.skip(i)`, 'middle' is `Target.middle()`, any other slot None
        (a place no preset can name). Systems whose slots are named otherwise override it."""
        targets: list[Target | None] = []
        for name in self.slots:
            kind, _, index = name.partition(" ")
            if kind == SKIP and index.isdigit():
                targets.append(Target.skip(int(index)))
            else:
                targets.append(Target.middle() if name == MIDDLE else None)
        return tuple(targets)

    def unet_weight_patches(self) -> dict[str, WeightPatch]:
        """UNet weights shifted or replaced while this control is applied (none by default)."""
        return {}

    # Controls built from the base UNet's own weights (Control-LoRA) set this; the caller then gives
    # them the weights of the model being sampled with `use_base_unet` before a run, None after it.
    uses_base_unet: ClassVar[bool] = False

    def use_base_unet(self, unet_state_dict: Mapping[str, torch.Tensor] | None, name: str = "the base model") -> None:
        """Take (or, with None, drop) the base UNet's weights; only for `uses_base_unet` controls."""

    def run_memory(self) -> int:
        """Bytes a run allocates beyond the parameters (Control-LoRA: the ControlNet it builds)."""
        return 0

    def check_fits(self, layout: UNetLayout) -> None:
        """Raise ControlNetError naming both models when this control cannot feed `layout`."""
        if layout.family is not None and layout.family != self.family:
            raise ControlNetError(
                f"{self.label} is for {family_name(self.family)} but {layout.name} is "
                f"{family_name(layout.family)}: use a {self.system} made for {family_name(layout.family)}")

    def prepare_version(self) -> int:
        """Changes when weights are edited in place, so a cached `prepare` result is recomputed."""
        return sum(0 if p.is_inference() else p._version for p in self.parameters())


def take_frames(tensor: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Rows of `tensor` for each frame index (a batch of 1 serves every row without a copy)."""
    if tensor.shape[0] == 1:
        return tensor.expand(frames.numel(), *tensor.shape[1:])
    return tensor.index_select(0, frames.to(tensor.device))


@dataclass
class Contribution:
    """The summed additions of every active control for one UNet call, by target, full batch."""

    skips: dict[int, torch.Tensor] = field(default_factory=dict)
    middle: torch.Tensor | None = None
    encoder: dict[int, torch.Tensor] = field(default_factory=dict)
    # Stream points: block index k (after skip k is stored) or None (after the middle block).
    stream: dict[int | None, list[StreamFunction]] = field(default_factory=dict)
    # Attention inputs, by Target.attention_key: functions of the tokens that projection reads.
    attention: dict[tuple, list[StreamFunction]] = field(default_factory=dict)

    def add(self, target: Target, value: torch.Tensor | StreamFunction) -> None:
        if target.kind == SKIP:
            self.skips[target.block] = _sum(self.skips.get(target.block), value)
        elif target.kind == MIDDLE:
            self.middle = _sum(self.middle, value)
        elif target.kind == ENCODER:
            self.encoder[target.block] = _sum(self.encoder.get(target.block), value)
        elif target.kind in (STREAM, STREAM_MIDDLE):
            self.stream.setdefault(target.block if target.kind == STREAM else None, []).append(value)
        elif target.kind == ATTENTION:
            self.attention.setdefault(target.attention_key, []).append(value)
        else:
            raise ValueError(f"unknown addition target {target}")

    def is_empty(self) -> bool:
        return not (self.skips or self.encoder or self.stream or self.attention) and self.middle is None

    def stream_addition(self, point: int | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """Σ f(hidden) over the stream functions at `point` (each sees the same hidden state)."""
        total = None
        for function in self.stream.get(point, ()):
            total = _sum(total, function(hidden))
        return total

    def attention_addition(self, key: tuple, tokens: torch.Tensor) -> torch.Tensor | None:
        """Σ f(tokens) over the attention functions at `key` (Target.attention_key)."""
        total = None
        for function in self.attention.get(key, ()):
            total = _sum(total, function(tokens))
        return total


def token_grid(latent_size: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of a transformer block's token grid: the latent downscaled by a power of 2 the way the
    UNet's stride-2 convs do (sides rounded up), with h·w == tokens."""
    height, width = latent_size
    factor = 1
    while factor <= max(height, width):
        grid = (-(-height // factor), -(-width // factor))
        if grid[0] * grid[1] == tokens:
            return grid
        factor *= 2
    raise ValueError(f"{tokens} tokens are no downscaled grid of the {height}×{width} latent")


def _sum(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value
