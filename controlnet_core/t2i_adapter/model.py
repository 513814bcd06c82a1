"""T2IAdapterModel: the T2I-Adapter (full, XL, light) with the original parameter names.

Shapes for a hint of B×c×H×W (H, W multiples of the unshuffle factor u; c = 1 or 3):
  unshuffled   B×(c·u²)×H/u×W/u
  features     one per level, channels[k] at H/u / 2^(downsamples so far)
The features depend only on the hint (no timestep), so they are computed once per run and added
to the UNet's encoder stream at every step (see `additions`).

Odd sizes: the average-pool downsample pads by (H mod 2, W mod 2) and counts the padding, as the
host (ComfyUI) does; diffusers pools with ceil_mode instead, which gives the same shapes but other
values on maps with an odd side. They agree whenever every pooled map has even sides (SD1.x:
hint sides multiples of 64; SDXL: of 32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ControlNetError, InputError
from ..modes import T2I_ADAPTER_SOFT_WEIGHTS
from ..ops import default_operations
from ..protocol import Addition, ControlModel, HintSpec, Target, UNetCall, UNetLayout, family_name, standard_layout, take_frames
from .config import FULL, T2IAdapterConfig


def average_pool_down(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pool that pads odd sides by one and counts the padding (the host's Downsample)."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[-2] % 2, x.shape[-1] % 2))


class _ConvDown(nn.Module):
    """Strided 3×3 conv downsample (`down_opt.op`), for adapters trained with use_conv."""

    def __init__(self, channels: int, operations, **kw) -> None:
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FullResBlock(nn.Module):
    """[downsample] → [in_conv to out channels] → x + block2(ReLU(block1(x)))."""

    def __init__(self, in_channels: int, out_channels: int, down: bool, ksize: int, use_conv: bool,
                 operations, **kw) -> None:
        super().__init__()
        self.down = down
        if down and use_conv:
            self.down_opt = _ConvDown(in_channels, operations, **kw)
        self.in_conv = (operations.Conv2d(in_channels, out_channels, ksize, 1, ksize // 2, **kw)
                        if in_channels != out_channels else None)
        self.block1 = operations.Conv2d(out_channels, out_channels, 3, 1, 1, **kw)
        self.block2 = operations.Conv2d(out_channels, out_channels, ksize, 1, ksize // 2, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x) if hasattr(self, "down_opt") else average_pool_down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class LightResBlock(nn.Module):
    def __init__(self, channels: int, operations, **kw) -> None:
        super().__init__()
        self.block1 = operations.Conv2d(channels, channels, 3, 1, 1, **kw)
        self.block2 = operations.Conv2d(channels, channels, 3, 1, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class LightLevel(nn.Module):
    """[downsample] → 1×1 in_conv to a quarter width → residual blocks → 1×1 out_conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool, operations, **kw) -> None:
        super().__init__()
        inner = out_channels // 4
        self.down = down
        self.in_conv = operations.Conv2d(in_channels, inner, 1, 1, 0, **kw)
        self.body = nn.Sequential(*(LightResBlock(inner, operations, **kw) for _ in range(num_res_blocks)))
        self.out_conv = operations.Conv2d(inner, out_channels, 1, 1, 0, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = average_pool_down(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapterModel(ControlModel):
    """A T2I-Adapter as a control system: four slots (its features, shallowest first); `prepare` runs
    the whole adapter once per run; each feature is added to the encoder stream after the last input
    block with its channels and resolution (SD1.x: blocks 2, 5, 8, 11), the SDXL adapter's fourth
    feature after the middle block."""

    system = "T2I-Adapter"

    def __init__(self, config: T2IAdapterConfig, device=None, dtype=None, operations=default_operations,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        kw = {"device": device, "dtype": dtype}
        self.unshuffle = nn.PixelUnshuffle(config.unshuffle)
        blocks: list[nn.Module] = []
        if config.kind == FULL:
            self.conv_in = operations.Conv2d(config.cin, config.channels[0], 3, 1, 1, **kw)
            previous = config.channels[0]
            for level, out_channels in enumerate(config.channels):
                for j in range(config.num_res_blocks):
                    blocks.append(FullResBlock(previous if j == 0 else out_channels, out_channels,
                                               config.downsample[level] and j == 0, config.ksize, config.use_conv,
                                               operations, **kw))
                previous = out_channels
        else:
            previous = config.cin
            for level, out_channels in enumerate(config.channels):
                blocks.append(LightLevel(previous, out_channels, config.num_res_blocks, config.downsample[level],
                                         operations, **kw))
                previous = out_channels
        self.body = nn.ModuleList(blocks)

    # ---- architecture ----------------------------------------------------------------------------
    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """B×c×H×W hint in [0, 1] → one feature per level."""
        cfg = self.config
        if hint.ndim != 4 or hint.shape[1] != cfg.image_channels:
            raise InputError(f"{self.label} hint: expected B×{cfg.image_channels}×H×W, found {tuple(hint.shape)}")
        if hint.shape[2] % cfg.unshuffle or hint.shape[3] % cfg.unshuffle:
            raise InputError(f"{self.label} hint: height and width must be multiples of {cfg.unshuffle}, "
                             f"found {tuple(hint.shape[2:])}")
        x = self.unshuffle(hint.to(self.dtype))
        features = []
        if cfg.kind == FULL:
            x = self.conv_in(x)
            for level in range(len(cfg.channels)):
                for j in range(cfg.num_res_blocks):
                    x = self.body[level * cfg.num_res_blocks + j](x)
                features.append(x)
        else:
            for level_module in self.body:
                x = level_module(x)
                features.append(x)
        return features

    # ---- the control-system protocol ---------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.config.family

    @property
    def variant(self) -> str:
        return f"T2I-Adapter {self.config.variant}"

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f"feature {k}" for k in range(len(self.config.channels)))

    @property
    def soft_weights(self) -> tuple[float, ...] | None:
        return T2I_ADAPTER_SOFT_WEIGHTS if len(self.config.channels) == len(T2I_ADAPTER_SOFT_WEIGHTS) else None

    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        # The host's rule: 8× the latent, rounded up to a multiple of the unshuffle factor; RGB → gray
        # by the plain channel mean.
        step = self.config.unshuffle
        return HintSpec(-(-latent_height * 8 // step) * step, -(-latent_width * 8 // step) * step,
                        self.config.image_channels, gray="mean")

    def prepare(self, hint: torch.Tensor) -> list[torch.Tensor]:
        return self(hint)

    def targets(self, layout: UNetLayout) -> list[Target]:
        """Where each feature goes in `layout`: after the last input block with the feature's channels
        and resolution; the SDXL adapter's last feature after the middle block."""
        cfg = self.config
        targets = []
        for k, (channels, downscale) in enumerate(zip(cfg.channels, cfg.feature_downscale())):
            if cfg.xl and k == len(cfg.channels) - 1:
                if layout.middle_channels != channels:
                    raise ControlNetError(f"{self.label}: its middle-block feature has {channels} channels but "
                                          f"{layout.name}'s middle block has {layout.middle_channels}")
                targets.append(Target.middle())
                continue
            matches = [i for i, (c, d) in enumerate(zip(layout.block_channels, layout.block_downscale))
                       if c == channels and d == downscale]
            if not matches:
                raise ControlNetError(
                    f"{self.label} ({family_name(self.family)}) does not fit {layout.name} "
                    f"({family_name(layout.family)}): its feature {k} ({channels} channels at latent/{downscale}) "
                    f"matches no input block of that UNet. Use a T2I-Adapter made for {family_name(layout.family)}.")
            targets.append(Target.encoder(matches[-1]))
        return targets

    def check_fits(self, layout: UNetLayout) -> None:
        super().check_fits(layout)
        self.targets(layout)

    def slot_targets(self, layout: UNetLayout | None = None) -> tuple[Target, ...]:
        return tuple(self.targets(layout or standard_layout(self.family)))

    def additions(self, call: UNetCall, prepared: list[torch.Tensor], frames: torch.Tensor) -> list[Addition]:
        targets = self.targets(call.layout or standard_layout(self.family))
        return [Addition(target, k, take_frames(feature, frames))
                for k, (target, feature) in enumerate(zip(targets, prepared))]
