"""ControlStack: controls of any system on one generation, summed into one Contribution per UNet call.

Each ControlEntry carries its own strength, schedule range, control mode, mask and per-slot
weights. For a UNet call the stack runs only the entries that are on (inside their range, strength
> 0) and adds, for every addition a control makes (see protocol.py),

    strength · mode weight[slot] · weights[slot] · mask · row scale · value

where the mask is area-resized to the addition's resolution (for attention inputs, the token grid
of that transformer block) and the row scale is 1 on conditional
rows and `uncond_strength` (0 in "ControlNet is more important", and always 0 for a model that is
`cond_only`, such as a shuffle ControlNet) on unconditional ones. Rows whose scale is 0 are not
computed at all.

Entries whose models share a fusion key (protocol.py: e.g. several control types of one Union
file) run as one group in one forward of that model; each entry's strength and mask then act inside
the model on its own part, and the group's shared slot weights and row scale on the result.

Batches, one rule for every system, control images and masks alike (the host's own rule, see
`pair_frames`): the latent batch holds one chunk per entry of `chunk_kinds` (the host batches cond
and uncond together; 0 = cond, 1 = uncond), each of `per_chunk` latents, and latent j of every
chunk pairs with the same frame.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .fast import ReusePolicy, deduplicated_additions, reused_additions
from .hint import INTERPOLATIONS, RESIZE_MODES, as_image_batch, as_mask_batch, prepare_hint, prepare_mask
from .modes import MODE_BALANCED, mode_settings
from .protocol import (Addition, Contribution, ControlModel, FusedMember, HintSpec, UNetCall, UNetLayout,
                       take_frames, token_grid)

MAX_STRENGTH = 10.0


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also false for NaN
        raise InputError(f"{name}: expected a fraction of the schedule in [0, 1], found {value}")
    return value


def check_strength(value: float, name: str = "strength") -> float:
    value = float(value)
    if not math.isfinite(value) or not (0.0 <= value <= MAX_STRENGTH):
        raise InputError(f"{name}: expected a number in [0, {MAX_STRENGTH}], found {value}")
    return value


def pair_frames(frames: int, per_chunk: int, chunks: int = 1, what: str = "control image") -> torch.Tensor:
    """Which frame each latent row uses, for `chunks` chunks of `per_chunk` latents (the host's
    `broadcast_image_to` rule): 1 frame serves every latent; with at least `per_chunk` frames latent
    j takes frame j (frames past `per_chunk` are unused, as in the host); a divisor of `per_chunk`
    repeats in turn (0, 1, 0, 1…). Any other count cannot pair and is refused."""
    if frames == 1:
        index = torch.zeros(per_chunk, dtype=torch.long)
    elif frames >= per_chunk:
        index = torch.arange(per_chunk)
    elif per_chunk % frames == 0:
        index = torch.arange(per_chunk) % frames
    else:
        raise InputError(f"{what} batch of {frames} does not pair with the latent batch of {per_chunk}: expected 1 "
                         f"(used for every latent), {per_chunk} (one per latent; more are cut to the first "
                         f"{per_chunk}) or a divisor of {per_chunk} (repeated in turn)")
    return index.repeat(chunks)


@dataclass(eq=False)
class ControlEntry:
    model: ControlModel
    image: torch.Tensor | np.ndarray          # control image, B×H×W×C (ComfyUI IMAGE) or H×W[×C]
    strength: float = 1.0
    start: float = 0.0                        # fraction of the schedule where the control starts
    end: float = 1.0
    mask: torch.Tensor | np.ndarray | None = None  # H×W or B×H×W, soft values allowed
    weights: Sequence[float] | None = None    # one per slot of the model (model.slots), on top of the mode's
    mode: str = MODE_BALANCED                 # control mode (modes.py)
    resize_mode: str = "crop_and_resize"
    interpolation: str = "nearest-exact"
    uncond_strength: float = 1.0              # multiplier on uncond rows, on top of the mode's
    enabled: bool = True
    reuse: ReusePolicy | None = None          # fast mode (fast.py, not exact): reuse additions across steps
    _prepared_cache: dict = field(default_factory=dict, init=False, repr=False)
    _mask_cache: dict = field(default_factory=dict, init=False, repr=False)
    _reuse_states: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.strength = check_strength(self.strength)
        self.uncond_strength = check_strength(self.uncond_strength, "uncond_strength")
        self.start = _check_fraction("start", self.start)
        self.end = _check_fraction("end", self.end)
        if self.start > self.end:
            raise InputError(f"start ({self.start}) is after end ({self.end})")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode: expected one of {RESIZE_MODES}, found {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation: expected one of {INTERPOLATIONS}, found {self.interpolation!r}")
        self.image = as_image_batch(self.image)
        if self.mask is not None:
            self.mask = as_mask_batch(self.mask)
        slots = self.model.slots
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(slots) or not all(math.isfinite(w) and w >= 0 for w in self.weights):
                raise InputError(f"weights: expected {len(slots)} finite numbers ≥ 0 for this {self.model.system} "
                                 f"({', '.join(slots)}), found {list(self.weights)}")
        settings = mode_settings(self.mode, self.model.soft_weights, self.model.system)
        mode_weights = settings.weights or (1.0,) * len(slots)
        user_weights = self.weights or (1.0,) * len(slots)
        self.slot_weights = tuple(a * b for a, b in zip(mode_weights, user_weights))
        self.uncond_scale = 0.0 if self.model.cond_only else self.uncond_strength * settings.uncond_multiplier

    def is_active(self, percent: float | None) -> bool:
        if not self.enabled or self.strength == 0.0:
            return False
        return percent is None or self.start <= percent <= self.end

    def hint_spec(self, latent_h: int, latent_w: int) -> HintSpec:
        return self.model.hint_spec(latent_h, latent_w)

    def prepared(self, latent_h: int, latent_w: int, device: torch.device) -> Any:
        """The model's `prepare` of this image for this latent size, computed once and reused across
        steps; the key holds everything it depends on, so a new image, size, device or edited weights
        recompute it."""
        model = self.model
        key = (id(self.image), _version_of(self.image), latent_h, latent_w, model.dtype, device, self.resize_mode,
               self.interpolation, model.prepare_version())
        if key not in self._prepared_cache:
            spec = self.hint_spec(latent_h, latent_w)
            hint = prepare_hint(self.image, spec.height, spec.width, self.resize_mode, spec.channels,
                                self.interpolation, gray=spec.gray)
            low, high = spec.value_range
            if (low, high) != (0.0, 1.0):
                hint = hint * (high - low) + low
            with torch.no_grad():
                self._prepared_cache = {key: model.prepare(hint.to(device=device, dtype=model.dtype))}
        return self._prepared_cache[key]

    def mask_at(self, latent_h: int, latent_w: int, height: int, width: int) -> torch.Tensor:
        """The mask placed like the control image, area-resized to one addition's resolution (area
        averaging keeps soft edges honest)."""
        full_key = (latent_h, latent_w)
        if full_key not in self._mask_cache:
            spec = self.hint_spec(latent_h, latent_w)
            self._mask_cache[full_key] = prepare_mask(self.mask, tuple(self.image.shape[1:3]), spec.height, spec.width,
                                                      self.resize_mode, latent_size=(latent_h, latent_w))
        key = (latent_h, latent_w, height, width)
        if key not in self._mask_cache:
            self._mask_cache[key] = F.interpolate(self._mask_cache[full_key], size=(height, width), mode="area")
        return self._mask_cache[key]

    def clear_cache(self) -> None:
        self._prepared_cache = {}
        self._mask_cache = {}
        self._reuse_states = []


def _version_of(tensor: torch.Tensor) -> int:
    """In-place edit counter. Inference tensors (ComfyUI runs nodes under torch.inference_mode) keep
    none, and cannot be edited outside inference mode, so they count as never edited."""
    return 0 if tensor.is_inference() else tensor._version


class ControlStack:
    """An ordered set of ControlEntry; `contributions` sums the active ones for one UNet call."""

    def __init__(self, entries: Sequence[ControlEntry] = ()) -> None:
        self.entries: list[ControlEntry] = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: ControlEntry) -> "ControlStack":
        self.entries.append(entry)
        return self

    def active_entries(self, percent: float | None = None,
                       active: Callable[[ControlEntry], bool] | None = None) -> list[ControlEntry]:
        return [e for e in self.entries
                if e.enabled and e.strength > 0 and (active(e) if active is not None else e.is_active(percent))]

    def clear_cache(self) -> None:
        for entry in self.entries:
            entry.clear_cache()

    @torch.no_grad()
    def contributions(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      y: torch.Tensor | None = None, *, percent: float | None = None,
                      active: Callable[[ControlEntry], bool] | None = None,
                      chunk_kinds: Sequence[int] | None = None,
                      layout: UNetLayout | None = None) -> Contribution | None:
        """What the active entries add to one UNet call with latent `x` (B×C×h×w, input scaling
        applied), or None when nothing is on. Tensors are in x's dtype. `layout` describes the base
        UNet (where encoder features go); without it each control assumes its family's standard UNet."""
        entries = self.active_entries(percent, active)
        if not entries:
            return None
        chunk_kinds = list(chunk_kinds) if chunk_kinds else [0]
        chunks, batch = len(chunk_kinds), x.shape[0]
        if batch % chunks:
            raise InputError(f"latent batch {batch} does not split into {chunks} cond/uncond chunks")
        per_chunk = batch // chunks
        timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps.reshape(-1)
        total = Contribution()
        for group in fusion_groups(entries):
            if len(group) == 1:
                _EntryCall(group[0], x, timesteps, context, y, chunk_kinds, per_chunk, layout).add_to(total)
            else:
                _FusedCall(group, x, timesteps, context, y, chunk_kinds, per_chunk, layout).add_to(total)
        return None if total.is_empty() else total

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None = None, **options) -> "Residuals | None":
        """ControlNet-style view of `contributions`: the skip residuals in encoder order and the
        middle one. Only for stacks whose controls add residuals alone (plain ControlNets)."""
        from .controlnet.model import Residuals

        total = self.contributions(x, timesteps, context, y, **options)
        if total is None:
            return None
        if total.encoder or total.stream or total.middle is None or \
                sorted(total.skips) != list(range(len(total.skips))):
            raise InputError("ControlStack.residuals covers stacks of plain ControlNets; this stack also adds to "
                             "the encoder stream or the hidden state: use contributions()")
        return Residuals([total.skips[i] for i in range(len(total.skips))], total.middle)


class _EntryCall:
    """One entry's additions to one UNet call: rows, frames, scaling, masks."""

    def __init__(self, entry: ControlEntry, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None, chunk_kinds: list[int], per_chunk: int, layout: UNetLayout | None) -> None:
        self.entry, self.x, self.timesteps, self.context, self.y, self.layout = entry, x, timesteps, context, y, layout
        chunks = len(chunk_kinds)
        self.batch, self.latent_size = x.shape[0], tuple(x.shape[-2:])
        self.frames = pair_frames(entry.image.shape[0], per_chunk, chunks)
        self.mask_frames = None if entry.mask is None else pair_frames(entry.mask.shape[0], per_chunk, chunks, "mask")
        row_scale = torch.tensor([1.0 if kind == 0 else entry.uncond_scale for kind in chunk_kinds
                                  for _ in range(per_chunk)], dtype=x.dtype, device=x.device)
        self.rows = row_scale.nonzero().flatten()
        self.subset = self.rows.numel() < self.batch  # only the rows that receive control are computed
        self.row_scale = None if bool((row_scale == 1).all()) else row_scale[self.rows]

    def _call(self) -> UNetCall:
        """The UNet call restricted to the controlled rows."""
        rows = self.rows
        pick = (lambda t: t) if not self.subset else \
            (lambda t: t if t is None or t.shape[0] == 1 else t.index_select(0, rows))  # noqa: E731
        return UNetCall(pick(self.x), pick(self.timesteps), pick(self.context), pick(self.y), self.layout)

    def add_to(self, total: Contribution) -> None:
        if self.rows.numel() == 0 or not any(self.entry.slot_weights):
            return  # nothing it adds would reach the UNet: nothing computed
        entry, rows = self.entry, self.rows
        model = entry.model
        prepared = entry.prepared(*self.latent_size, self.x.device)
        call = self._call()
        frames = self.frames[rows.cpu()]
        if entry.reuse is None or entry.reuse.exact:
            additions = deduplicated_additions(model, call, prepared, frames)
        else:
            additions = reused_additions(entry.reuse, entry._reuse_states, model, call, prepared, frames)
        for addition in additions:
            scale = entry.strength * entry.slot_weights[addition.slot]
            if callable(addition.value):
                total.add(addition.target, self._stream_function(addition, scale))
            else:
                total.add(addition.target, self._finish(addition.value, scale))

    def _stream_function(self, addition: Addition, scale: float):
        function, rows, subset = addition.value, self.rows, self.subset

        def stream(hidden: torch.Tensor) -> torch.Tensor:
            return self._finish(function(hidden.index_select(0, rows) if subset else hidden), scale)

        return stream

    def _finish(self, value: torch.Tensor, scale: float) -> torch.Tensor:
        """value (controlled rows) · scale · row scale · mask, in x's dtype, over the full batch."""
        out = value.to(self.x.dtype) * scale
        if self.row_scale is not None:
            out = out * self.row_scale.view(-1, *([1] * (out.ndim - 1)))
        if out.ndim == 3:  # B×N×C tokens of a transformer block: the mask on its grid, row-major
            mask = self.mask_rows(*token_grid(self.latent_size, out.shape[1]))
            mask = None if mask is None else mask.flatten(2).transpose(1, 2)
        else:
            mask = self.mask_rows(*out.shape[-2:])
        if mask is not None:
            out = out * mask.to(device=out.device, dtype=out.dtype)
        if self.subset:
            full = out.new_zeros((self.batch, *out.shape[1:]))
            full[self.rows] = out
            out = full
        return out

    def mask_rows(self, height: int, width: int) -> torch.Tensor | None:
        """The entry's mask for the controlled rows at this resolution (rows×1×height×width), or None."""
        if self.entry.mask is None:
            return None
        mask = self.entry.mask_at(*self.latent_size, height, width)
        return take_frames(mask, self.mask_frames[self.rows.cpu()])


def fusion_groups(entries: Sequence[ControlEntry]) -> list[list[ControlEntry]]:
    """The entries in stack order, those that run in one forward gathered into one group (at the
    place of the first): same `fusion_key` of their models (e.g. one Union network), and the same
    per-slot weights and uncond scale, which then act on the shared result. Others are alone."""
    groups: list[list[ControlEntry]] = []
    by_key: dict[Any, list[ControlEntry]] = {}
    for entry in entries:
        key = entry.model.fusion_key()
        if key is None:
            groups.append([entry])
            continue
        key = (key, entry.slot_weights, entry.uncond_scale)
        if key not in by_key:
            by_key[key] = []
            groups.append(by_key[key])
        by_key[key].append(entry)
    return groups


class _FusedCall(_EntryCall):
    """A fusion group's additions to one UNet call: one forward of the shared model
    (`fused_additions`). Each entry's strength and mask act inside, on its own part; the group's
    slot weights and row scale act on the result, and so does the pointwise maximum of the entries'
    masks (no mask when any entry has none: that entry controls everywhere)."""

    def __init__(self, entries: Sequence[ControlEntry], *args) -> None:
        super().__init__(entries[0], *args)
        self.members = [_EntryCall(entry, *args) for entry in entries]  # rows agree: same uncond scale

    def add_to(self, total: Contribution) -> None:
        if self.rows.numel() == 0:
            return
        rows = self.rows.cpu()
        members = [FusedMember(part.entry.model, part.entry.prepared(*self.latent_size, self.x.device),
                               part.frames[rows], part.entry.strength,
                               None if part.entry.mask is None else part.mask_rows)
                   for part in self.members]
        for addition in self.entry.model.fused_additions(self._call(), members):
            scale = self.entry.slot_weights[addition.slot]
            if callable(addition.value):
                total.add(addition.target, self._stream_function(addition, scale))
            else:
                total.add(addition.target, self._finish(addition.value, scale))

    def mask_rows(self, height: int, width: int) -> torch.Tensor | None:
        masks = [part.mask_rows(height, width) for part in self.members]
        if any(mask is None for mask in masks):
            return None
        combined = masks[0]
        for mask in masks[1:]:
            combined = torch.maximum(combined, mask)
        return combined
