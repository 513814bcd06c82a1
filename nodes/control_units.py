"""Host-independent pieces of the node layer: control modes, the per-entry settings, UNet fit checks.

Nothing here imports ComfyUI, so CI tests it directly. `control_object.py` and
`controlnet_nodes.py` build on it inside the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..controlnet_core import ControlNetError, InputError

# Control modes as ComfyUI/A1111 users know them. The strings are part of the saved-workflow
# contract: never rename one (add an alias in MODE_ALIASES instead).
MODE_BALANCED = "balanced"
MODE_PROMPT = "prompt is more important"
MODE_CONTROLNET = "ControlNet is more important"
CONTROL_MODES = (MODE_BALANCED, MODE_PROMPT, MODE_CONTROLNET)
MODE_ALIASES = {"Balanced": MODE_BALANCED, "My prompt is more important": MODE_PROMPT}

# A1111's soft-injection base (sd-webui-controlnet, and "guess mode" of the original ControlNet):
# residual i of 13 (12 skips in encoder order, then the middle block) gets strength·0.825^(12−i).
SOFT_INJECTION_BASE = 0.825


def soft_injection_weights(residual_count: int) -> list[float]:
    """Per-residual multipliers for the two non-balanced modes, in core order (down..., mid).

    With n = residual_count − 1 down residuals (12 for SD1.x/SD2.x, 9 for SDXL), residual i gets
    0.825^(n − i): the middle block keeps 1.0, the deepest skip 0.825, …, the shallowest skip
    (the conv_in output) 0.825^n (0.0995 for SD1.5, 0.177 for SDXL). This is A1111's
    `[w * 0.825 ** (12 - i) for i in range(13)]`, extended to other residual counts by the same rule.
    """
    if residual_count < 1:
        raise ValueError(f"soft_injection_weights: expected at least one residual, found {residual_count}")
    last = residual_count - 1
    return [SOFT_INJECTION_BASE ** float(last - i) for i in range(residual_count)]


def normalise_mode(mode: str) -> str:
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in CONTROL_MODES:
        raise InputError(f"control mode: expected one of {list(CONTROL_MODES)}, found {mode!r}")
    return mode


def mode_settings(mode: str, residual_count: int) -> tuple[list[float] | None, float]:
    """(per-residual weights or None, uncond multiplier) for a control mode.

    balanced                      : weights None (all 1), control on cond and uncond rows.
    prompt is more important      : soft weights, control on cond and uncond rows.
    ControlNet is more important  : soft weights, control on cond rows only (uncond gets 0),
                                    as A1111's cfg_injection + soft_injection and the original
                                    ControlNet's guess mode.
    """
    mode = normalise_mode(mode)
    if mode == MODE_BALANCED:
        return None, 1.0
    weights = soft_injection_weights(residual_count)
    return weights, (0.0 if mode == MODE_CONTROLNET else 1.0)


@dataclass(frozen=True)
class ControlUnit:
    """One entry of a stack as the user set it in a node: which ControlNet, which image, how much.

    `net` is a `LoadedControlNet` (see control_object.py) or, for a host object the core cannot run,
    that host object itself. `image` is a ComfyUI IMAGE (B×H×W×C in [0, 1]).
    """

    net: Any
    image: torch.Tensor
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: torch.Tensor | None = None
    mode: str = MODE_BALANCED
    label: str = ""

    def __post_init__(self) -> None:
        name = self.label or "ControlNet entry"
        if not isinstance(self.image, torch.Tensor) or self.image.ndim != 4:
            found = tuple(self.image.shape) if isinstance(self.image, torch.Tensor) else type(self.image).__name__
            raise InputError(f"{name}: image must be a ComfyUI IMAGE (batch×height×width×channels), found {found}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise InputError(
                f"{name}: expected 0 ≤ start_percent ≤ end_percent ≤ 1, found start {self.start}, end {self.end}")
        object.__setattr__(self, "mode", normalise_mode(self.mode))
        # Mask size and batch are checked by controlnet_core (prepare_mask) against the image and the
        # generation size, which is only known at sampling time.


def unet_skip_channels(unet_config: dict) -> list[int] | None:
    """Channels of the UNet's skip inputs in encoder order, then the middle block, from the
    host's unet_config; None when the config is not an ldm-style UNet (then no early check)."""
    try:
        model_channels = int(unet_config["model_channels"])
        channel_mult = list(unet_config["channel_mult"])
        num_res_blocks = unet_config["num_res_blocks"]
    except (KeyError, TypeError):
        return None
    if isinstance(num_res_blocks, int):
        num_res_blocks = [num_res_blocks] * len(channel_mult)
    channels = [model_channels]
    for level, mult in enumerate(channel_mult):
        channels += [mult * model_channels] * int(num_res_blocks[level])
        if level != len(channel_mult) - 1:
            channels.append(mult * model_channels)
    return channels + [channel_mult[-1] * model_channels]


def check_controlnet_fits_unet(net_name: str, net_family: str, net_channels: Sequence[int], net_context_dim: int,
                               net_needs_y: bool, base_name: str, unet_config: dict) -> None:
    """Raise ControlNetError naming both models when a ControlNet cannot feed this UNet.

    Checked before sampling so the user sees the mismatch at once, instead of the host's
    'control could not be applied' log line and an uncontrolled image.
    """
    expected = unet_skip_channels(unet_config)
    problems = []
    if expected is not None and list(net_channels) != expected:
        problems.append(f"its {len(net_channels)} residuals have channels {list(net_channels)}, "
                        f"the UNet's {len(expected)} skips have {expected}")
    unet_context = unet_config.get("context_dim")
    if unet_context is not None and net_context_dim != unet_context:
        problems.append(f"it reads text embeddings of width {net_context_dim}, the model gives {unet_context}")
    unet_has_y = unet_config.get("adm_in_channels") is not None or unet_config.get("num_classes") is not None
    if net_needs_y and not unet_has_y:
        problems.append("it needs the pooled-text/size vector (y) that this model does not provide")
    if problems:
        raise ControlNetError(
            f"ControlNet {net_name!r} ({net_family}) does not fit the base model {base_name}: "
            + "; ".join(problems) + f". Use a ControlNet trained for {base_name}.")


def check_residual_shapes(net_name: str, base_name: str, down: Sequence[torch.Tensor], mid: torch.Tensor,
                          x: torch.Tensor, expected_channels: Sequence[int] | None) -> None:
    """Last line of defence at every call: each residual must add onto the UNet tensor it targets."""
    if expected_channels is None:
        return
    found = [tuple(t.shape) for t in (*down, mid)]
    if len(found) != len(expected_channels):
        raise ControlNetError(
            f"ControlNet {net_name!r} gave {len(found)} residuals but the base model {base_name} takes "
            f"{len(expected_channels)}")
    height, width = x.shape[-2:]
    for index, (shape, channels) in enumerate(zip(found, expected_channels)):
        if shape[0] != x.shape[0] or shape[1] != channels:
            raise ControlNetError(
                f"ControlNet {net_name!r} residual {index} has shape {shape}, but the base model {base_name} "
                f"expects batch {x.shape[0]} and {channels} channels at that skip (latent {height}×{width})")


def sum_controls(first: dict | None, second: dict | None) -> dict | None:
    """Elementwise sum of two host control dicts ({'input'|'middle'|'output': [tensor|None]})."""
    if first is None:
        return second
    if second is None:
        return first
    merged: dict[str, list] = {}
    for key in set(first) | set(second):
        a, b = list(first.get(key, [])), list(second.get(key, []))
        length = max(len(a), len(b))
        a += [None] * (length - len(a))
        b += [None] * (length - len(b))
        merged[key] = [x if y is None else y if x is None else x + y for x, y in zip(a, b)]
    return merged


def sigma_in_range(sigma: "torch.Tensor | float", sigma_start: float, sigma_end: float) -> bool:
    """The host's step-range test: a control is on unless sigma > sigma(start) or sigma < sigma(end)."""
    return not bool(sigma > sigma_start or sigma < sigma_end)
