"""M-LSD large (``mlsd_large_512_fp32.pth``): a MobileNetV2 encoder and a U-shaped line decoder.

Input: RGB plus a constant channel of ones, all scaled to [-1, 1] (B×4×H×W, sides multiples of
32). Output: B×9×H/2×W/2; channel 0 is the line-centre logit, channels 1-4 the displacements
(x, y of the start, x, y of the end) from each centre to the segment's ends, in output pixels.

The encoder is MobileNetV2 cut after its 96-channel stage (features 0-13); stride-2 convolutions
pad only at the right and bottom, as the TFLite model it was converted from. The decoder fuses
the features at strides 16, 8, 4 and 2 (blocks 15-22) and ends in a dilated head (block 23).
Parameter names equal the published state dict (``backbone.features.0.0.weight`` …
``block23.conv3.bias``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MLSDConfig:
    """Channel widths; the defaults are the published large model."""

    stem_channels: int = 32
    # MobileNetV2 stages kept by M-LSD: (expansion, out channels, repeats, first stride).
    stages: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
    decoder_channels: int = 64
    head_channels: int = 16  # the head's last conv; only channels 7.. are read (9 maps)
    output_offset: int = 7


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) + batch norm + ReLU6; a stride-2 conv pads one row/column at the bottom/right only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )
        self.stride = stride

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            hidden = F.pad(hidden, (0, 1, 0, 1))
        return super().forward(hidden)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expansion (when ``expansion`` > 1), 3×3 depthwise, linear 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, hidden, kernel_size=1)] if expansion != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv(hidden) if self.use_residual else self.conv(hidden)


class MobileNetV2Encoder(nn.Module):
    """``features``: the stem and the kept stages; returns the last feature map of strides 2, 4, 8, 16, 16."""

    def __init__(self, config: MLSDConfig) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(4, config.stem_channels, stride=2)]
        channels = config.stem_channels
        self.taps: list[int] = []
        for expansion, out_channels, repeats, stride in config.stages:
            for index in range(repeats):
                features.append(InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion))
                channels = out_channels
            self.taps.append(len(features) - 1)  # the last block of each stage feeds the decoder
        self.features = nn.Sequential(*features)

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            hidden = layer(hidden)
            if index in self.taps:
                taps.append(hidden)
        return taps


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class FuseBlock(nn.Module):
    """Decoder "type A": 1×1 projections of the skip (``conv2``) and the deeper map (``conv1``, then
    ×2 bilinear with aligned corners unless ``upscale`` is False), concatenated."""

    def __init__(self, skip_channels: int, deep_channels: int, out_channels: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(deep_channels, out_channels, 1)
        self.conv2 = _conv_bn_relu(skip_channels, out_channels, 1)
        self.upscale = upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        skip = self.conv2(skip)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((skip, deep), dim=1)


class RefineBlock(nn.Module):
    """Decoder "type B": a residual 3×3 conv, then a 3×3 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, in_channels, 3, padding=1)
        self.conv2 = _conv_bn_relu(in_channels, out_channels, 3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(hidden) + hidden)


class HeadBlock(nn.Module):
    """Decoder "type C": dilated 3×3 (rate 5), 3×3, then a 1×1 to the output maps."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, in_channels, 3, padding=5, dilation=5)
        self.conv2 = _conv_bn_relu(in_channels, in_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(hidden)))


class MLSDModel(nn.Module):
    """B×4×H×W in [-1, 1] → B×9×H/2×W/2 (centre logit, then start/end displacements)."""

    def __init__(self, config: MLSDConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MLSDConfig()
        widths = [stage[1] for stage in config.stages]  # encoder outputs at strides 2, 4, 8, 16, 16
        width = config.decoder_channels
        self.backbone = MobileNetV2Encoder(config)
        # Attribute names block15..block23 are the published checkpoint's key prefixes.
        self.block15 = FuseBlock(widths[3], widths[4], width, upscale=False)
        self.block16 = RefineBlock(2 * width, width)
        self.block17 = FuseBlock(widths[2], width, width)
        self.block18 = RefineBlock(2 * width, width)
        self.block19 = FuseBlock(widths[1], width, width)
        self.block20 = RefineBlock(2 * width, width)
        self.block21 = FuseBlock(widths[0], width, width)
        self.block22 = RefineBlock(2 * width, width)
        self.block23 = HeadBlock(width, config.head_channels)

    def forward(self, rgb1_minus1_1: torch.Tensor) -> torch.Tensor:
        stride2, stride4, stride8, stride16, deepest = self.backbone(rgb1_minus1_1)
        hidden = self.block16(self.block15(stride16, deepest))
        hidden = self.block18(self.block17(stride8, hidden))
        hidden = self.block20(self.block19(stride4, hidden))
        hidden = self.block22(self.block21(stride2, hidden))
        return self.block23(hidden)[:, self.config.output_offset :]
