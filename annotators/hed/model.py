"""ControlNet's soft-edge HED network ("ControlNetHED_Apache2", file ``ControlNetHED.pth``).

A VGG-style stack of five conv blocks; every block ends in a 1×1 projection to one channel, and
the five side outputs are averaged (after upsampling) into one edge logit map. The network takes
RGB in 0..255 (not normalised); a learned per-channel offset ``norm`` is subtracted first.

Parameter names equal the published state dict, so loading needs no key renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HEDConfig:
    """Shape of the network; the defaults are the published ``ControlNetHED.pth``."""

    in_channels: int = 3
    block_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs_per_block: tuple[int, ...] = (2, 2, 3, 3, 3)


class HEDBlock(nn.Module):
    """``convs_per_block`` 3×3 conv+ReLU layers, then a 1×1 side projection to one logit channel."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *[
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, kernel_size=3, padding=1)
                for index in range(num_convs)
            ]
        )
        self.projection = nn.Conv2d(out_channels, 1, kernel_size=1)

    def forward(self, hidden: torch.Tensor, downsample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if downsample:
            hidden = F.max_pool2d(hidden, kernel_size=2, stride=2)
        for conv in self.convs:
            hidden = F.relu(conv(hidden))
        return hidden, self.projection(hidden)


class HEDModel(nn.Module):
    """Returns the five side-output logit maps at strides 1, 2, 4, 8 and 16."""

    def __init__(self, config: HEDConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HEDConfig()
        if len(config.block_channels) != len(config.convs_per_block):
            raise ValueError("HEDConfig: block_channels and convs_per_block must have the same length")
        self.norm = nn.Parameter(torch.zeros(1, config.in_channels, 1, 1))
        in_channels = config.in_channels
        for index, (channels, num_convs) in enumerate(zip(config.block_channels, config.convs_per_block), start=1):
            # Attribute names block1..block5 are the published checkpoint's key prefixes.
            setattr(self, f"block{index}", HEDBlock(in_channels, channels, num_convs))
            in_channels = channels

    @property
    def blocks(self) -> list[HEDBlock]:
        return [getattr(self, f"block{index}") for index in range(1, len(self.config.block_channels) + 1)]

    def forward(self, rgb_0_255: torch.Tensor) -> list[torch.Tensor]:
        """``rgb_0_255``: B×3×H×W float RGB in 0..255 (H and W multiples of 16)."""
        hidden = rgb_0_255 - self.norm
        side_outputs = []
        for index, block in enumerate(self.blocks):
            hidden, projection = block(hidden, downsample=index > 0)
            side_outputs.append(projection)
        return side_outputs

    def mean_logit(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        """B×H×W edge logit: the side outputs upsampled to the input size and averaged."""
        height, width = rgb_0_255.shape[-2:]
        side_outputs = self(rgb_0_255)
        upsampled = [
            F.interpolate(side, size=(height, width), mode="bilinear", align_corners=False) for side in side_outputs
        ]
        return torch.stack(upsampled, dim=0).mean(dim=0)[:, 0]

    def edge_probability(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        """B×H×W edge probability: the sigmoid of :meth:`mean_logit`."""
        return torch.sigmoid(self.mean_logit(rgb_0_255))
