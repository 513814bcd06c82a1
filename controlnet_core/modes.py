"""Control modes as A1111 / Forge users know them, for every control system.

- balanced: every slot at weight 1, control on the conditional and the unconditional rows;
- prompt is more important: the system's soft weights ("soft injection"), on both;
- ControlNet is more important: the same soft weights, on the conditional rows only ("CFG
  injection": the unconditional rows are not controlled, so CFG pushes towards the control).

Soft weights per system (`ControlModel.soft_weights`):
- ControlNet: A1111's `[w * 0.825 ** (12 - i) for i in range(13)]` over the residuals in encoder
  order, middle last, cut to the model's count as A1111 and Forge cut it for SDXL: SD1.x/SD2.x
  skips 0.825^12 … 0.825^1 and middle 1.0; SDXL skips 0.825^12 … 0.825^4 and middle 0.825^3.
- T2I-Adapter: A1111's (0.25, 0.62, 0.825, 1.0) over its four features, shallowest first (the
  fourth is the middle-block feature on SDXL).
- Systems without per-block structure (ControlNeXt: one feature) have none: "prompt is more
  important" is refused for them, and "ControlNet is more important" means cond rows only.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

MODE_BALANCED = "balanced"
MODE_PROMPT = "prompt is more important"
MODE_CONTROLNET = "ControlNet is more important"
CONTROL_MODES = (MODE_BALANCED, MODE_PROMPT, MODE_CONTROLNET)

# The original ControlNet's guess-mode base, as A1111 applies it ("Magic number" in lllyasviel's code).
SOFT_INJECTION_BASE = 0.825
A1111_RESIDUALS = 13  # A1111's list is written for SD1.x: 12 skips + the middle block
T2I_ADAPTER_SOFT_WEIGHTS = (0.25, 0.62, 0.825, 1.0)


def controlnet_soft_weights(residual_count: int) -> tuple[float, ...]:
    """A1111/Forge soft weights for a ControlNet with `residual_count` residuals (skips, then middle).

    13 (SD1.x/SD2.x): 0.825^(12-i), the middle 1.0. Fewer (SDXL's 10): A1111's 13 values cut to the
    first `residual_count`, so SDXL's middle gets 0.825^3. More than 13 (no released model) extends
    the rule with the middle at 1.0."""
    if residual_count < 1:
        raise ValueError(f"controlnet_soft_weights: expected at least one residual, found {residual_count}")
    top = max(A1111_RESIDUALS, residual_count) - 1
    return tuple(SOFT_INJECTION_BASE ** float(top - i) for i in range(residual_count))


@dataclass(frozen=True)
class ModeSettings:
    weights: tuple[float, ...] | None   # per slot; None = all 1
    uncond_multiplier: float            # scale of the unconditional rows (0 = not controlled)


def check_mode(mode: str) -> str:
    if mode not in CONTROL_MODES:
        raise InputError(f"control mode: expected one of {list(CONTROL_MODES)}, found {mode!r}")
    return mode


def mode_settings(mode: str, soft_weights: tuple[float, ...] | None, system: str = "this control") -> ModeSettings:
    """Per-slot weights and the uncond multiplier of a control mode for a system with `soft_weights`."""
    mode = check_mode(mode)
    if mode == MODE_BALANCED:
        return ModeSettings(None, 1.0)
    if mode == MODE_PROMPT and soft_weights is None:
        raise InputError(f"control mode {mode!r} scales per-block weights, which {system} does not have; "
                         f"use {MODE_BALANCED!r} or {MODE_CONTROLNET!r} (control on the positive side only)")
    return ModeSettings(soft_weights, 0.0 if mode == MODE_CONTROLNET else 1.0)
