"""Per-block weights: one multiplier per slot of a control (protocol.py), from a preset users know.

A `ControlWeights` is system-agnostic until it meets a control: `resolve(model, layout)` turns it
into one number per slot of that model (ControlNet: the skip residuals in encoder order, then the
middle; T2I-Adapter: its features, shallowest first; ControlNeXt: its one feature) and an uncond
multiplier. A preset that names a place the system does not have, or a custom list of the wrong
length, is refused with a message naming both the weights and the control.

Presets (× `multiplier` on every slot):
- uniform: 1 on every slot;
- A1111 soft weights: the system's soft weights, as control mode "prompt is more important" uses
  them (modes.py): ControlNet 0.825^(12−i) with the middle 1.0 (SDXL cut to 10), T2I-Adapter
  0.25, 0.62, 0.825, 1.0;
- diffusers guess mode: diffusers' `torch.logspace(-1, 0, n)` over a ControlNet's n residuals
  (skips in encoder order, middle last: 0.1 … 1.0), and on the conditional rows only, as diffusers
  runs the ControlNet in guess mode with classifier-free guidance (uncond multiplier 0);
- only the middle: 1 on the slots added at the middle block, 0 elsewhere;
- only the deep skips: 1 on the slots added at the deepest resolution of the encoder (SD1.x skips
  9–11 at 1/8 of the latent, SDXL 6–8 at 1/4; a T2I-Adapter's deepest encoder feature), 0
  elsewhere, the middle included;
- custom: the values given, one per slot.

`uncond_multiplier` scales the unconditional rows on top of the preset's (and of the control mode's).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InputError
from .protocol import ENCODER, MIDDLE, SKIP, STREAM, STREAM_MIDDLE, ControlModel, Target, UNetLayout, standard_layout

PRESET_UNIFORM = "uniform"
PRESET_A1111_SOFT = "A1111 soft weights"
PRESET_GUESS_MODE = "diffusers guess mode"
PRESET_ONLY_MIDDLE = "only the middle"
PRESET_ONLY_DEEP = "only the deep skips"
PRESET_CUSTOM = "custom"
WEIGHT_PRESETS = (PRESET_UNIFORM, PRESET_A1111_SOFT, PRESET_GUESS_MODE, PRESET_ONLY_MIDDLE, PRESET_ONLY_DEEP,
                  PRESET_CUSTOM)
MAX_WEIGHT = 10.0


@dataclass(frozen=True)
class ResolvedWeights:
    """A ControlWeights fitted to one control: one value per slot, and the uncond multiplier."""

    slots: tuple[float, ...]
    uncond_multiplier: float = 1.0


@dataclass(frozen=True)
class ControlWeights:
    preset: str = PRESET_UNIFORM
    multiplier: float = 1.0
    uncond_multiplier: float = 1.0
    values: tuple[float, ...] | None = None   # for PRESET_CUSTOM

    def __post_init__(self) -> None:
        if self.preset not in WEIGHT_PRESETS:
            raise InputError(f"weights preset: expected one of {list(WEIGHT_PRESETS)}, found {self.preset!r}")
        object.__setattr__(self, "multiplier", _check_number("weights multiplier", self.multiplier))
        object.__setattr__(self, "uncond_multiplier", _check_number("uncond_multiplier", self.uncond_multiplier))
        if self.preset == PRESET_CUSTOM:
            if not self.values:
                raise InputError("custom weights: expected one number per slot of the control, found none")
            object.__setattr__(self, "values", tuple(_check_number("custom weight", v) for v in self.values))
        elif self.values is not None:
            raise InputError(f"weights preset {self.preset!r} takes no values; use preset {PRESET_CUSTOM!r}")

    @property
    def label(self) -> str:
        what = f"custom weights ({len(self.values)} values)" if self.preset == PRESET_CUSTOM else \
            f"weights preset {self.preset!r}"
        return what if self.multiplier == 1.0 else f"{what} × {self.multiplier:g}"

    def resolve(self, model: ControlModel, layout: UNetLayout | None = None) -> ResolvedWeights:
        """One value per slot of `model` on `layout` (else its family's standard UNet)."""
        base, uncond = self._preset_slots(model, layout)
        return ResolvedWeights(tuple(w * self.multiplier for w in base), uncond * self.uncond_multiplier)

    def _preset_slots(self, model: ControlModel, layout: UNetLayout | None) -> tuple[tuple[float, ...], float]:
        slots = model.slots
        if self.preset == PRESET_UNIFORM:
            return (1.0,) * len(slots), 1.0
        if self.preset == PRESET_CUSTOM:
            if len(self.values) != len(slots):
                raise self._misfit(model, f"it has {len(slots)} slots ({_slot_list(slots)}), the weights give "
                                          f"{len(self.values)} values")
            return self.values, 1.0
        if self.preset == PRESET_A1111_SOFT:
            if model.soft_weights is None:
                raise self._misfit(model, "it has no per-block soft weights")
            return tuple(model.soft_weights), 1.0
        targets = model.slot_targets(layout)
        if self.preset == PRESET_GUESS_MODE:
            kinds = [t.kind if t is not None else None for t in targets]
            if not kinds or kinds[-1] != MIDDLE or any(k != SKIP for k in kinds[:-1]):
                raise self._misfit(model, "guess mode scales a ControlNet's skip residuals and middle block, which "
                                          f"it does not add ({_slot_list(slots)})")
            count = len(slots)  # diffusers: torch.logspace(-1, 0, n): 10^(-1 + i/(n-1))
            return tuple(10.0 ** (-1.0 + i / (count - 1)) if count > 1 else 1.0 for i in range(count)), 0.0
        if self.preset == PRESET_ONLY_MIDDLE:
            chosen = [t is not None and t.kind in (MIDDLE, STREAM_MIDDLE) for t in targets]
            if not any(chosen):
                raise self._misfit(model, f"it adds nothing at the middle block ({_slot_list(slots)})")
            return tuple(1.0 if c else 0.0 for c in chosen), 1.0
        # PRESET_ONLY_DEEP
        if not any(t is not None and t.kind in (SKIP, ENCODER, STREAM) for t in targets):
            raise self._misfit(model, f"it adds nothing to the encoder's skips ({_slot_list(slots)})")
        layout = layout or standard_layout(model.family)
        scales = [_downscale(t, layout) for t in targets]
        deepest = max(s for s in scales if s is not None)
        return tuple(1.0 if s == deepest else 0.0 for s in scales), 1.0

    def _misfit(self, model: ControlModel, why: str) -> InputError:
        return InputError(f"{self.label} do not fit {model.label}: {why}")


def _downscale(target: Target | None, layout: UNetLayout) -> int | None:
    """The encoder resolution (downscale vs the latent) a slot adds at; None for the middle and the unknown."""
    if target is None or target.kind not in (SKIP, ENCODER, STREAM):
        return None
    if not 0 <= target.block < layout.num_input_blocks:
        raise InputError(f"a slot adds at {target}, which {layout.name} does not have "
                         f"({layout.num_input_blocks} input blocks)")
    return layout.block_downscale[target.block]


def _slot_list(slots: Sequence[str]) -> str:
    return ", ".join(slots) if len(slots) <= 4 else f"{slots[0]} … {slots[-1]}"


def _check_number(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_WEIGHT:
        raise InputError(f"{name}: expected a number in [0, {MAX_WEIGHT:g}], found {value}")
    return value


def parse_weight_values(text: str) -> tuple[float, ...] | None:
    """Comma- or space-separated numbers ('0.2, 0.4, 1'); None for an empty text."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"custom weights: expected numbers separated by commas, found {text!r}") from None
