"""LeReS (Yin et al., "Learning to Recover 3D Scene Shape from a Single Image"): a ResNeXt-101 32×8d
encoder and a decoder of feature-transfer / fusion blocks, and the pix2pix U-Net that merges two
depth estimates for the boosted variant (Miangoleh et al., "Boosting Monocular Depth Estimation").

Published files:

* ``res101.pth``: ``{"depth_model": state_dict, ...}`` with keys ``[module.]depth_model.encoder_modules.
  encoder.*`` (torchvision's ResNeXt names, no classifier) and ``depth_model.decoder_modules.*``.
* ``latest_net_G.pth``: the U-Net generator (``unet_1024``: ten down/up levels, 64 base filters, no
  normalisation, so convolutions have no bias except the last transposed one), keys ``model.model.…``.

Parameter names equal the published ones, so loading needs no renaming. LeReS predicts depth
(far = large); the U-Net maps two [-1, 1] depth maps to one in [-1, 1] (tanh).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LeresConfig:
    """Sizes; the defaults are the published ResNeXt-101 32×8d and its decoder."""

    base_planes: int = 64
    layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    groups: int = 32
    width_per_group: int = 8
    decoder_channels: tuple[int, int, int, int] = (256, 256, 256, 512)  # the reference's "midchannels"

    @property
    def encoder_channels(self) -> tuple[int, int, int, int]:
        return tuple(self.base_planes * 4 * 2**index for index in range(4))


# --------------------------------------------------------------------------- ResNeXt encoder


class Bottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck: 1×1, grouped 3×3 (strided), 1×1, each with BatchNorm."""

    def __init__(self, in_channels: int, planes: int, stride: int, config: LeresConfig, downsample: bool) -> None:
        super().__init__()
        width = int(planes * (config.width_per_group / 64.0)) * config.groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=config.groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
            if downsample else None
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = hidden if self.downsample is None else self.downsample(hidden)
        return F.relu(out + shortcut)


class ResNeXt(nn.Module):
    def __init__(self, config: LeresConfig) -> None:
        super().__init__()
        planes = config.base_planes
        self.conv1 = nn.Conv2d(3, planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        in_channels = planes
        for index, blocks in enumerate(config.layers):
            stage_planes, stride = planes * 2**index, 1 if index == 0 else 2
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(in_channels, stage_planes, stride if block == 0 else 1, config,
                                        downsample=block == 0 and (stride != 1 or in_channels != stage_planes * 4)))
                in_channels = stage_planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16, 32."""
        hidden = F.max_pool2d(F.relu(self.bn1(self.conv1(image))), kernel_size=3, stride=2, padding=1)
        features = []
        for index in range(1, 5):
            hidden = getattr(self, f"layer{index}")(hidden)
            features.append(hidden)
        return features


class EncoderModules(nn.Module):
    """The reference's ``DepthNet`` wrapper: the backbone sits under ``encoder``."""

    def __init__(self, config: LeresConfig) -> None:
        super().__init__()
        self.encoder = ResNeXt(config)


# --------------------------------------------------------------------------- decoder


class FTB(nn.Module):
    """Feature transfer block: conv3×3, plus a relu-conv-BN-relu-conv residual branch, then ReLU."""

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.conv_branch = nn.Sequential(
            nn.ReLU(), nn.Conv2d(mid_channels, mid_channels, 3, padding=1), nn.BatchNorm2d(mid_channels),
            nn.ReLU(), nn.Conv2d(mid_channels, mid_channels, 3, padding=1),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(hidden)
        return F.relu(hidden + self.conv_branch(hidden))


def _upsample(hidden: torch.Tensor) -> torch.Tensor:
    return F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=True)


class FFM(nn.Module):
    """Feature fusion: transfer the skip, add the coarser path, transfer again, upsample ×2."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ftb1 = FTB(in_channels, mid_channels)
        self.ftb2 = FTB(mid_channels, out_channels)

    def forward(self, skip: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return _upsample(self.ftb2(self.ftb1(skip) + hidden))


class AO(nn.Module):
    """Adaptive output: conv-BN-ReLU-conv to one channel, upsampled ×2 to the input size."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.adapt_conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels // 2, 3, padding=1), nn.BatchNorm2d(in_channels // 2), nn.ReLU(),
            nn.Conv2d(in_channels // 2, 1, 3, padding=1),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _upsample(self.adapt_conv(hidden))


class Decoder(nn.Module):
    def __init__(self, config: LeresConfig) -> None:
        super().__init__()
        inputs, mids = config.encoder_channels, config.decoder_channels
        self.conv = FTB(inputs[3], mids[3])
        self.conv1 = nn.Conv2d(mids[3], mids[2], 3, padding=1)
        self.ffm2 = FFM(inputs[2], mids[2], mids[2])
        self.ffm1 = FFM(inputs[1], mids[1], mids[1])
        self.ffm0 = FFM(inputs[0], mids[0], mids[0])
        self.outconv = AO(mids[0])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        hidden = _upsample(self.conv1(self.conv(features[3])))  # stride 32 → 16
        hidden = self.ffm2(features[2], hidden)  # → 8
        hidden = self.ffm1(features[1], hidden)  # → 4
        hidden = self.ffm0(features[0], hidden)  # → 2
        return self.outconv(hidden)  # → 1


class DepthModel(nn.Module):
    def __init__(self, config: LeresConfig) -> None:
        super().__init__()
        self.encoder_modules = EncoderModules(config)
        self.decoder_modules = Decoder(config)


class LeresModel(nn.Module):
    """The reference's ``RelDepthModel``: B×3×H×W normalised input (H, W multiples of 32) → B×H×W depth."""

    def __init__(self, config: LeresConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LeresConfig()
        self.depth_model = DepthModel(config)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise ValueError(f"LeReS: input height and width must be multiples of 32, found {tuple(image.shape[-2:])}")
        features = self.depth_model.encoder_modules.encoder(image)
        return self.depth_model.decoder_modules(features)[:, 0]


# --------------------------------------------------------------------------- pix2pix merge U-Net


class UnetLevel(nn.Module):
    """One level of pix2pix's U-Net (``UnetSkipConnectionBlock`` with no normalisation).

    ``model`` indices are the published keys: outermost [down conv, inner, ReLU, up conv (bias), tanh];
    middle [LeakyReLU, down conv, (norm), inner, ReLU, up conv, (norm)]; innermost [LeakyReLU, down conv,
    ReLU, up conv, (norm)]. The identity norms keep their places but hold no weights.
    """

    def __init__(self, outer: int, inner: int, in_channels: int | None = None, child: nn.Module | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, kernel_size=4, stride=2, padding=1, bias=False)
        if outermost:
            layers = [down, child, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif child is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False),
                      nn.Identity()]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.Identity(), child, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=False), nn.Identity()]
        self.model = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.model(hidden)
        return out if self.outermost else torch.cat([hidden, out], dim=1)


@dataclass(frozen=True)
class MergeConfig:
    """pix2pix ``unet_1024``: 10 levels (input 1024 → 1×1), 64 base filters, 2 input channels."""

    levels: int = 10
    base_filters: int = 64
    in_channels: int = 2
    size: int = 1024  # the side the merge runs at


class MergeUNet(nn.Module):
    """B×2×S×S (two depth maps in [-1, 1]) → B×1×S×S merged depth in [-1, 1]."""

    def __init__(self, config: MergeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MergeConfig()
        f = config.base_filters
        level = UnetLevel(f * 8, f * 8)  # innermost
        for _ in range(config.levels - 5):
            level = UnetLevel(f * 8, f * 8, child=level)
        for outer, inner in ((f * 4, f * 8), (f * 2, f * 4), (f, f * 2)):
            level = UnetLevel(outer, inner, child=level)
        self.model = UnetLevel(1, f, in_channels=config.in_channels, child=level, outermost=True)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.model(pair)
