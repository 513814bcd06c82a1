"""ControlStack: controls of any system on one generation, summed into one Contribution per UNet call.

Each ControlEntry carries its own strength, schedule range, control mode, mask and per-slot
weights. For a UNet call the stack runs only the entries that are on (inside their range, strength
> 0) and adds, for every addition a control makes (see protocol.py),

    strength · mode weight[slot] · weights[slot] · mask · row scale · value

where the mask is area-resized to the addition's resolution (for attention inputs, the token grid
of that transformer block) and the row scale is 1 on conditional rows and `uncond_strength` (0 in
"ControlNet is more important", and always 0 for a model that is `cond_only`, such as a shuffle
ControlNet) on unconditional ones. Rows whose scale is 0 are not computed at all. `weights` may be a
preset (weights.py); keyframes (keyframes.py) multiply their strength, weights, mask and uncond
multiplier in at each point of the schedule, inside the entry's range; sparse controls leave unlisted
frames' rows out (context.py).

Entries whose models share a fusion key (protocol.py: e.g. several control types of one Union
file) run as one group in one forward of that model; each entry's strength and mask then act inside
the model on its own part, and the group's shared slot weights and row scale on the result. Entries
under keyframes or with sparse frames run on their own. Entries in a fast mode (fast.py) reuse their
additions across steps; a group whose entries share one fast mode reuses its fused forward.

Batches, one rule for every system, control images and masks alike (the host's own rule, see
`context.pair_frames`): the latent batch holds one chunk per entry of `chunk_kinds` (the host batches
cond and uncond together; 0 = cond, 1 = uncond), each of `per_chunk` latents, and latent j of every
chunk pairs with the same frame; in a context window, with the frame of the window's latent j.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .context import FrameWindow, check_frame_indices, pair_frames, row_frames  # noqa: F401 (pair_frames: re-exported)
from .errors import InputError
from .fast import ReusePolicy, StepClock, deduplicated_additions, reused_additions
from .hint import INTERPOLATIONS, RESIZE_MODES, as_image_batch, as_mask_batch, prepare_hint, prepare_mask
from .keyframes import NEUTRAL, KeyframeGroup, KeyframeState
from .modes import MODE_BALANCED, mode_settings
from .protocol import (Addition, Contribution, ControlModel, FusedMember, HintSpec, UNetCall, UNetLayout,
                       take_frames, token_grid)
from .weights import ControlWeights

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


@dataclass(eq=False)
class ControlEntry:
    model: ControlModel
    image: torch.Tensor | np.ndarray          # control image, B×H×W×C (ComfyUI IMAGE) or H×W[×C]
    strength: float = 1.0
    start: float = 0.0                        # fraction of the schedule where the control starts
    end: float = 1.0
    mask: torch.Tensor | np.ndarray | None = None  # H×W or B×H×W, soft values allowed
    weights: Sequence[float] | ControlWeights | None = None  # one per slot of the model (model.slots) or a
                                              # preset (weights.py), on top of the mode's
    mode: str = MODE_BALANCED                 # control mode (modes.py)
    resize_mode: str = "crop_and_resize"
    interpolation: str = "nearest-exact"
    uncond_strength: float = 1.0              # multiplier on uncond rows, on top of the mode's
    enabled: bool = True
    reuse: ReusePolicy | None = None          # fast mode (fast.py, not exact): reuse additions across steps
    keyframes: KeyframeGroup | None = None    # strength/mask/weights over the schedule (keyframes.py)
    frame_indices: Sequence[int] | None = None  # sparse control: the latent frame of each control frame (context.py)
    layout: UNetLayout | None = None          # the base UNet, for weight presets (else the family's standard)
    _prepared_cache: dict = field(default_factory=dict, init=False, repr=False)
    _mask_cache: dict = field(default_factory=dict, init=False, repr=False)
    _reuse_states: list = field(default_factory=list, init=False, repr=False)
    _clock: StepClock = field(default_factory=StepClock, init=False, repr=False)

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
        weights_uncond = 1.0
        if isinstance(self.weights, ControlWeights):
            resolved = self.weights.resolve(self.model, self.layout)
            self.weights, weights_uncond = resolved.slots, resolved.uncond_multiplier
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(slots) or not all(math.isfinite(w) and w >= 0 for w in self.weights):
                raise InputError(f"weights: expected {len(slots)} finite numbers ≥ 0 for this {self.model.system} "
                                 f"({', '.join(slots)}), found {list(self.weights)}")
        settings = mode_settings(self.mode, self.model.soft_weights, self.model.system)
        mode_weights = settings.weights or (1.0,) * len(slots)
        user_weights = self.weights or (1.0,) * len(slots)
        self.slot_weights = tuple(a * b for a, b in zip(mode_weights, user_weights))
        self.uncond_scale = 0.0 if self.model.cond_only else \
            self.uncond_strength * settings.uncond_multiplier * weights_uncond
        self.resolved_keyframes = None if not self.keyframes else self.keyframes.resolve(self.model, self.layout)
        if self.frame_indices is not None:
            self.frame_indices = check_frame_indices(self.frame_indices, self.image.shape[0])

    def keyframe_state(self, percent: float | None, reached: Callable[[float], bool] | None = None) -> KeyframeState:
        """What the keyframes say at `percent` of the schedule (neutral without keyframes or percent)."""
        if self.resolved_keyframes is None or percent is None:
            return NEUTRAL
        return self.resolved_keyframes.state(percent, reached)

    @property
    def reuses(self) -> bool:
        """Whether the entry is in a (not exact) reuse mode."""
        return self.reuse is not None and not self.reuse.exact

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

    def mask_at(self, latent_h: int, latent_w: int, height: int, width: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mask (the entry's, or a keyframe's) placed like the control image, area-resized to one
        addition's resolution (area averaging keeps soft edges honest)."""
        mask = self.mask if mask is None else mask
        full_key = (id(mask), latent_h, latent_w)
        if full_key not in self._mask_cache:
            spec = self.hint_spec(latent_h, latent_w)
            self._mask_cache[full_key] = prepare_mask(mask, tuple(self.image.shape[1:3]), spec.height, spec.width,
                                                      self.resize_mode, latent_size=(latent_h, latent_w))
        key = (*full_key, height, width)
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
                      layout: UNetLayout | None = None,
                      keyframes: Callable[[ControlEntry], KeyframeState] | None = None,
                      window: FrameWindow | None = None) -> Contribution | None:
        """What the active entries add to one UNet call with latent `x` (B×C×h×w, input scaling
        applied), or None when nothing is on. Tensors are in x's dtype. `layout` describes the base
        UNet (where encoder features go); without it each control assumes its family's standard UNet.
        `keyframes(entry)` gives each entry's keyframe state for this call (default: at `percent`);
        `window` names the latent frames of the video this call covers (context.py)."""
        for entry in self.entries:  # every call, on or off: reuse must know the steps an entry missed
            if entry.reuses:
                entry._clock.tick(timesteps)
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
        states = {id(entry): keyframes(entry) if keyframes is not None else entry.keyframe_state(percent)
                  for entry in entries}
        entries = [entry for entry in entries if states[id(entry)].strength != 0.0]  # faded out: nothing computed
        for group in fusion_groups(entries, states):
            args = (x, timesteps, context, y, chunk_kinds, per_chunk, layout)
            if len(group) == 1:
                _EntryCall(group[0], *args, states[id(group[0])], window).add_to(total)
            else:
                _FusedCall(group, *args, NEUTRAL, window).add_to(total)
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
                 y: torch.Tensor | None, chunk_kinds: list[int], per_chunk: int, layout: UNetLayout | None,
                 state: KeyframeState = NEUTRAL, window: FrameWindow | None = None) -> None:
        self.entry, self.x, self.timesteps, self.context, self.y, self.layout = entry, x, timesteps, context, y, layout
        self.state = state
        chunks = len(chunk_kinds)
        self.batch, self.latent_size = x.shape[0], tuple(x.shape[-2:])
        self.frames, controlled = row_frames(entry.image.shape[0], per_chunk, chunks, window, entry.frame_indices)
        self.masks = [(mask, row_frames(mask.shape[0], per_chunk, chunks, window, what="mask")[0])
                      for mask in (entry.mask, state.mask) if mask is not None]
        uncond_scale = entry.uncond_scale * state.uncond_multiplier
        row_scale = torch.tensor([1.0 if kind == 0 else uncond_scale for kind in chunk_kinds
                                  for _ in range(per_chunk)], dtype=x.dtype, device=x.device)
        if controlled is not None:  # sparse control: frames without a control image get none
            row_scale = row_scale * controlled.to(row_scale.device)
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
        call = self._call()
        frames = self.frames[rows.cpu()]

        def compute() -> list[Addition]:
            return deduplicated_additions(model, call, entry.prepared(*self.latent_size, self.x.device), frames)

        additions = reused_additions(entry.reuse, entry._reuse_states, entry._clock.step, call, frames, compute) \
            if entry.reuses else compute()
        for addition in additions:
            scale = entry.strength * entry.slot_weights[addition.slot]
            if self.state is not NEUTRAL:
                weights = self.state.weights
                scale = scale * self.state.strength * (1.0 if weights is None else weights[addition.slot])
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
        if out.ndim == 3:  # B×N×C tokens of a transformer block: the masks on its grid, row-major
            masks = [m.flatten(2).transpose(1, 2) for m in self.row_masks(*token_grid(self.latent_size, out.shape[1]))]
        else:
            masks = self.row_masks(*out.shape[-2:])
        for mask in masks:  # the entry's mask, then the keyframe's
            out = out * mask.to(device=out.device, dtype=out.dtype)
        if self.subset:
            full = out.new_zeros((self.batch, *out.shape[1:]))
            full[self.rows] = out
            out = full
        return out

    def row_masks(self, height: int, width: int) -> list[torch.Tensor]:
        """The entry's mask and its keyframe's (those it has) for the controlled rows at this
        resolution, each rows×1×height×width."""
        rows = self.rows.cpu()
        return [take_frames(self.entry.mask_at(*self.latent_size, height, width, source), frames[rows])
                for source, frames in self.masks]

    def mask_rows(self, height: int, width: int) -> torch.Tensor | None:
        """The product of `row_masks`, or None when the entry has no mask."""
        combined = None
        for mask in self.row_masks(height, width):
            combined = mask if combined is None else combined * mask
        return combined


def fusion_groups(entries: Sequence[ControlEntry],
                  states: Mapping[int, KeyframeState] | None = None) -> list[list[ControlEntry]]:
    """The entries in stack order, those that run in one forward gathered into one group (at the
    place of the first): same `fusion_key` of their models (e.g. one Union network), the same
    per-slot weights and uncond scale, which then act on the shared result, and the same speed
    mode. Others are alone, and so is an entry whose keyframe state at this call (`states`, by id)
    is not neutral or whose control is sparse (its rows are its own)."""
    groups: list[list[ControlEntry]] = []
    by_key: dict[Any, list[ControlEntry]] = {}
    for entry in entries:
        key = entry.model.fusion_key()
        own_rows_or_state = entry.frame_indices is not None or (states is not None and states[id(entry)] is not NEUTRAL)
        if key is None or own_rows_or_state:
            groups.append([entry])
            continue
        key = (key, entry.slot_weights, entry.uncond_scale, entry.reuse if entry.reuses else None)
        if key not in by_key:
            by_key[key] = []
            groups.append(by_key[key])
        by_key[key].append(entry)
    return groups


class _FusedCall(_EntryCall):
    """A fusion group's additions to one UNet call: one forward of the shared model
    (`fused_additions`). Each entry's strength and mask act inside, on its own part; the group's
    slot weights and row scale act on the result, and so does the pointwise maximum of the entries'
    masks (no mask when any entry has none: that entry controls everywhere). The group shares one
    reuse policy (fusion_groups); its reusable additions are kept by its first entry, keyed by the
    members, since their strengths and masks act inside the forward."""

    def __init__(self, entries: Sequence[ControlEntry], *args) -> None:
        super().__init__(entries[0], *args)
        self.members = [_EntryCall(entry, *args) for entry in entries]  # rows agree: same uncond scale

    def add_to(self, total: Contribution) -> None:
        if self.rows.numel() == 0:
            return
        rows, call, first = self.rows.cpu(), self._call(), self.entry

        def compute() -> list[Addition]:
            members = [FusedMember(part.entry.model, part.entry.prepared(*self.latent_size, self.x.device),
                                   part.frames[rows], part.entry.strength,
                                   None if part.entry.mask is None else part.mask_rows)
                       for part in self.members]
            return first.model.fused_additions(call, members)

        if first.reuses:
            key = tuple((id(part.entry), part.entry.strength, id(part.entry.mask), tuple(part.frames[rows].tolist()))
                        for part in self.members)
            additions = reused_additions(first.reuse, first._reuse_states, first._clock.step, call,
                                         self.frames[rows], compute, key)
        else:
            additions = compute()
        for addition in additions:
            scale = self.entry.slot_weights[addition.slot]
            if callable(addition.value):
                total.add(addition.target, self._stream_function(addition, scale))
            else:
                total.add(addition.target, self._finish(addition.value, scale))

    def row_masks(self, height: int, width: int) -> list[torch.Tensor]:
        masks = [part.mask_rows(height, width) for part in self.members]
        if any(mask is None for mask in masks):
            return []
        combined = masks[0]
        for mask in masks[1:]:
            combined = torch.maximum(combined, mask)
        return [combined]
