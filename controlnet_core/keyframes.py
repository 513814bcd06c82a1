"""Timestep keyframes and strength curves: how a control changes over the sampling schedule.

A `KeyframeGroup` holds keyframes ordered by `start` (a fraction of the schedule, like the entry's
start/end percent). Each sets a strength multiplier and optionally a mask and per-block weights
from its start on; `interpolation` says how the strength goes to the next keyframe's:

- "hold": stays until the next keyframe (a step);
- "linear": straight line;
- "ease": cosine ease-in-out, (1 − cos πt)/2 of the way at fraction t of the segment.

Weights interpolate with the strength (slot by slot) when both keyframes of a segment have them;
masks hold. A keyframe without a mask or weights keeps those of the last earlier keyframe that had
them (Advanced-ControlNet's inherit_missing). Before the first keyframe the control runs at its
entry's own settings (multiplier 1).

The combining rule with the entry (stack.py): the entry's start/end range says when the control is
on at all; inside it everything multiplies, per slot and per pixel:

    entry strength · keyframe strength · entry weights · keyframe weights · entry mask · keyframe mask

and on uncond rows also the entry's and the keyframe weights' uncond multipliers.

Groups are immutable and chain like the host's conditioning: `group.add(keyframe)` returns a new
group, so one upstream group can feed several branches. A keyframe at the start of an existing one
replaces it. `strength_curve(points, shape)` builds a group from a few (start, strength) points.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .hint import as_mask_batch
from .protocol import ControlModel, UNetLayout
from .weights import ControlWeights, ResolvedWeights

HOLD, LINEAR, EASE = "hold", "linear", "ease"
INTERPOLATIONS = (HOLD, LINEAR, EASE)
CURVE_SHAPES = {"linear": LINEAR, "ease": EASE, "constant": HOLD}
MAX_KEYFRAME_STRENGTH = 10.0


@dataclass(frozen=True, eq=False)
class Keyframe:
    start: float                                   # fraction of the schedule where it takes over
    strength: float = 1.0                          # multiplier on the entry's strength
    mask: torch.Tensor | np.ndarray | None = None  # multiplied with the entry's mask (H×W or B×H×W)
    weights: ControlWeights | Sequence[float] | None = None  # multiplied with the entry's weights
    interpolation: str = HOLD                      # how the strength goes to the next keyframe's

    def __post_init__(self) -> None:
        start = float(self.start)
        if not 0.0 <= start <= 1.0:
            raise InputError(f"keyframe start: expected a fraction of the schedule in [0, 1], found {start}")
        strength = float(self.strength)
        if not math.isfinite(strength) or not 0.0 <= strength <= MAX_KEYFRAME_STRENGTH:
            raise InputError(f"keyframe at {start:g}: strength expected in [0, {MAX_KEYFRAME_STRENGTH:g}], "
                             f"found {strength}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"keyframe at {start:g}: interpolation expected one of {list(INTERPOLATIONS)}, "
                             f"found {self.interpolation!r}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "strength", strength)


@dataclass(frozen=True)
class KeyframeState:
    """What the keyframes say at one point of the schedule (after inheritance and interpolation)."""

    strength: float = 1.0
    mask: torch.Tensor | None = None               # B×1×H×W
    weights: tuple[float, ...] | None = None
    uncond_multiplier: float = 1.0


NEUTRAL = KeyframeState()


class KeyframeGroup:
    """Keyframes ordered by start; immutable (add returns a new group)."""

    def __init__(self, keyframes: Iterable[Keyframe] = ()) -> None:
        by_start: dict[float, Keyframe] = {}
        for keyframe in keyframes:
            if not isinstance(keyframe, Keyframe):
                raise InputError(f"keyframes: expected Keyframe objects, found {type(keyframe).__name__}")
            by_start[keyframe.start] = keyframe  # a later keyframe at the same start replaces the earlier
        self.keyframes: tuple[Keyframe, ...] = tuple(by_start[s] for s in sorted(by_start))

    def __len__(self) -> int:
        return len(self.keyframes)

    def __iter__(self):
        return iter(self.keyframes)

    def add(self, *keyframes: Keyframe) -> "KeyframeGroup":
        return KeyframeGroup((*self.keyframes, *keyframes))

    def merged(self, other: "KeyframeGroup | None") -> "KeyframeGroup":
        return self if other is None else self.add(*other.keyframes)

    @property
    def starts(self) -> tuple[float, ...]:
        return tuple(k.start for k in self.keyframes)

    def resolve(self, model: ControlModel, layout: UNetLayout | None = None) -> "ResolvedKeyframes":
        """Fit every keyframe's weights to `model` (a misfit is refused now, naming the keyframe)."""
        resolved = []
        for keyframe in self.keyframes:
            weights = None
            if keyframe.weights is not None:
                try:
                    weights = resolve_weights(keyframe.weights, model, layout)
                except InputError as error:
                    raise InputError(f"keyframe at {keyframe.start:g}: {error}") from None
            mask = None if keyframe.mask is None else as_mask_batch(keyframe.mask)
            resolved.append((keyframe, weights, mask))
        return ResolvedKeyframes(tuple(resolved))


def resolve_weights(weights: ControlWeights | Sequence[float], model: ControlModel,
                    layout: UNetLayout | None = None) -> ResolvedWeights:
    """A ControlWeights or a plain list (one value per slot) fitted to `model`."""
    if isinstance(weights, ControlWeights):
        return weights.resolve(model, layout)
    values = tuple(float(w) for w in weights)
    return ControlWeights("custom", values=values).resolve(model, layout)


@dataclass(frozen=True)
class ResolvedKeyframes:
    """A group fitted to one control: keyframes with their weights as per-slot values and their masks
    as B×1×H×W tensors."""

    items: tuple[tuple[Keyframe, ResolvedWeights | None, torch.Tensor | None], ...]

    @property
    def masks(self) -> list[torch.Tensor]:
        return [mask for _, _, mask in self.items if mask is not None]

    def current(self, reached: Callable[[float], bool]) -> int:
        """Index of the last keyframe whose start is reached (-1: before the first)."""
        index = -1
        for i, (keyframe, _, _) in enumerate(self.items):
            if reached(keyframe.start):
                index = i
            else:
                break
        return index

    def state(self, percent: float, reached: Callable[[float], bool] | None = None) -> KeyframeState:
        """The state at `percent` of the schedule. `reached(start)` says whether a keyframe's start has
        been passed (default percent >= start; the host compares sigmas, like its step ranges), and
        `percent` places the point inside an interpolated segment."""
        index = self.current(reached or (lambda start: percent >= start))
        if index < 0:
            return NEUTRAL
        keyframe, weights, mask = self.items[index]
        if mask is None:
            mask = next((m for _, _, m in reversed(self.items[:index]) if m is not None), None)
        if weights is None:
            weights = next((w for _, w, _ in reversed(self.items[:index]) if w is not None), None)
        strength = keyframe.strength
        slots = None if weights is None else weights.slots
        if keyframe.interpolation != HOLD and index + 1 < len(self.items):
            following, next_weights, _ = self.items[index + 1]
            span = following.start - keyframe.start
            t = min(max((percent - keyframe.start) / span, 0.0), 1.0) if span > 0 else 0.0
            if keyframe.interpolation == EASE:
                t = (1.0 - math.cos(math.pi * t)) / 2.0
            strength = strength + (following.strength - strength) * t
            if slots is not None and next_weights is not None and keyframe.weights is not None:
                slots = tuple(a + (b - a) * t for a, b in zip(slots, next_weights.slots))
        return KeyframeState(strength, mask, slots, 1.0 if weights is None else weights.uncond_multiplier)


def strength_curve(points: Sequence[tuple[float, float]], shape: str = "linear") -> KeyframeGroup:
    """A keyframe group through (start, strength) points, joined by `shape` (linear, ease, constant).
    Before the first point the strength is 1 (the entry's own), after the last it holds."""
    if shape not in CURVE_SHAPES:
        raise InputError(f"curve shape: expected one of {list(CURVE_SHAPES)}, found {shape!r}")
    if not points:
        raise InputError("strength curve: expected at least one (percent, strength) point, found none")
    return KeyframeGroup(Keyframe(start, strength, interpolation=CURVE_SHAPES[shape]) for start, strength in points)


def parse_curve_points(text: str) -> list[tuple[float, float]]:
    """Points written 'percent:strength, …' ('0.6:1, 1:0' fades out over the last 40%)."""
    points = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            start, strength = (float(v) for v in part.split(":"))
        except ValueError:
            raise InputError(f"curve points: expected 'percent:strength' pairs separated by commas "
                             f"(e.g. '0.6:1.0, 1.0:0.0'), found {part!r} in {text!r}") from None
        points.append((start, strength))
    return points
