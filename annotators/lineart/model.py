"""The ControlNet 1.1 line-art generator (``sk_model.pth`` realistic, ``sk_model2.pth`` coarse).

A small image-to-image ResNet (the CycleGAN generator shape): a 7×7 stem, two stride-2
downsamplings, residual blocks at 1/4 resolution, two transposed-conv upsamplings and a 7×7 head
with a sigmoid. Every normalisation is a parameter-free InstanceNorm, so the published files hold
only convolution weights. Input RGB in [0, 1]; output one channel in [0, 1] where lines are
**dark** on a white page (the annotator inverts it for the ControlNet).

Parameter names equal the published state dict (``model0.1.weight`` … ``model4.1.bias``): the
sequential containers keep the published positions, parameter-free layers included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LineartConfig:
    """Shape of the generator; the defaults are the published files."""

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 64  # channels of the stem; ×2 per downsampling
    residual_blocks: int = 3
    sampling_steps: int = 2  # stride-2 downsamplings (and as many upsamplings)


class ResidualBlock(nn.Module):
    """x + (reflect-pad, 3×3 conv, norm, ReLU, reflect-pad, 3×3 conv, norm)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv_block(hidden)


def _conv_norm_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(channels), nn.ReLU()]


class LineartGenerator(nn.Module):
    """RGB [0, 1] (B×3×H×W, H and W multiples of 4) → B×1×H×W line map, dark lines on white."""

    def __init__(self, config: LineartConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LineartConfig()
        channels = config.base_channels
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(config.in_channels, channels, 7), channels)
        )
        down: list[nn.Module] = []
        for _ in range(config.sampling_steps):
            down += _conv_norm_relu(nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), channels * 2)
            channels *= 2
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[ResidualBlock(channels) for _ in range(config.residual_blocks)])
        up: list[nn.Module] = []
        for _ in range(config.sampling_steps):
            transposed = nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1)
            up += _conv_norm_relu(transposed, channels // 2)
            channels //= 2
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(channels, config.out_channels, 7), nn.Sigmoid())

    def forward(self, rgb_0_1: torch.Tensor) -> torch.Tensor:
        hidden = self.model1(self.model0(rgb_0_1))
        return self.model4(self.model3(self.model2(hidden)))
