"""The anime line-art network of ControlNet 1.1 (``netG.pth``): a pix2pix U-Net generator.

``num_downs`` stride-2 4×4 convolutions take the image down to 1/2^num_downs (1×1 for a 256²
input with the published 8), transposed convolutions bring it back, and every level concatenates
its input with its decoded output (the skip connection). Norms are parameter-free InstanceNorms,
so every convolution has a bias. Input RGB scaled to [-1, 1]; output one channel in [-1, 1]
(tanh), dark lines on white.

One detail of the published network is kept on purpose: each inner level starts with an in-place
LeakyReLU(0.2), which also rewrites the tensor its skip connection concatenates. The skip
therefore carries ``leaky_relu(x)``, not ``x``; the weights were trained that way.

Parameter names equal the published state dict: the levels nest as ``model.model.1.model.3…``,
each level a sequential container whose positions hold (down-ReLU, down-conv, down-norm, inner
level, up-ReLU, up-conv, up-norm), parameter-free layers included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2


@dataclass(frozen=True)
class AnimeLineartConfig:
    """Shape of the U-Net; the defaults are the published ``netG.pth``."""

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 64  # channels after the first downsampling ("ngf")
    num_downs: int = 8  # input sides must be multiples of 2**num_downs

    def __post_init__(self) -> None:
        if self.num_downs < 5:
            raise ValueError(f"AnimeLineartConfig: num_downs must be at least 5, found {self.num_downs}")

    @property
    def multiple(self) -> int:
        return 2**self.num_downs


class UNetLevel(nn.Module):
    """One level: downsample, the inner level (if any), upsample; inner levels concatenate a skip."""

    def __init__(
        self, outer: int, inner: int, *, input_channels: int | None = None, submodule: "UNetLevel | None" = None,
        outermost: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        input_channels = outer if input_channels is None else input_channels
        down = nn.Conv2d(input_channels, inner, kernel_size=4, stride=2, padding=1)
        up_in = inner if submodule is None else inner * 2
        up = nn.ConvTranspose2d(up_in, outer, kernel_size=4, stride=2, padding=1)
        if outermost:
            layers = [down, submodule, nn.ReLU(), up, nn.Tanh()]
        elif submodule is None:  # innermost
            layers = [nn.LeakyReLU(LEAK), down, nn.ReLU(), up, nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(LEAK), down, nn.InstanceNorm2d(inner), submodule, nn.ReLU(), up,
                      nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(hidden)
        activated = F.leaky_relu(hidden, LEAK)  # shared by the skip, as the in-place original
        return torch.cat([activated, self.model[1:](activated)], dim=1)


class AnimeLineartUNet(nn.Module):
    """RGB in [-1, 1] (B×3×H×W, sides multiples of ``config.multiple``) → B×1×H×W in [-1, 1]."""

    def __init__(self, config: AnimeLineartConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AnimeLineartConfig()
        widest = config.base_channels * 8
        level = UNetLevel(widest, widest)
        for _ in range(config.num_downs - 5):
            level = UNetLevel(widest, widest, submodule=level)
        for factor in (4, 2, 1):  # widths halve towards the image: 8c → 4c → 2c → c
            level = UNetLevel(config.base_channels * factor, config.base_channels * factor * 2, submodule=level)
        self.model = UNetLevel(
            config.out_channels, config.base_channels, input_channels=config.in_channels, submodule=level,
            outermost=True,
        )

    def forward(self, rgb_minus1_1: torch.Tensor) -> torch.Tensor:
        return self.model(rgb_minus1_1)
