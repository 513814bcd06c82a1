"""NormalBAE (Bae et al., "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal
Estimation"): an EfficientNet-B5 encoder and a decoder that refines its normals at ×8, ×4, ×2, ×1.

Published file: ``scannet.pt`` (``{"model": state_dict}``). The encoder is gen-efficientnet's
``tf_efficientnet_b5_ap`` (TensorFlow "same" padding, BatchNorm eps 1e-3, swish) with the pooling and
classifier removed, stored under ``encoder.original_model.``; the decoder under ``decoder.``.
Parameter names equal the published ones, so loading needs no renaming.

At inference the decoder refines every pixel (the reference's "test" mode; the point sampling of
its training mode is not needed). Output: B×4×H×W, unit normal (x, y, z) and a concentration κ.
Input: ImageNet-normalised RGB, H and W multiples of 32 (even sizes keep "same" padding exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common.layers import pad_same

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet's seven stages: (depthwise-separable?, kernel, stride, expansion). SE ratio 0.25 everywhere.
EFFICIENTNET_STAGES = ((True, 3, 1, 1), (False, 3, 2, 6), (False, 5, 2, 6), (False, 3, 2, 6),
                       (False, 5, 1, 6), (False, 5, 2, 6), (False, 3, 1, 6))
SE_RATIO = 0.25


@dataclass(frozen=True)
class NormalBaeConfig:
    """Sizes; the defaults are the published B5 (width ×1.6, depth ×2.2) and its decoder."""

    stem_channels: int = 48
    stage_channels: tuple[int, ...] = (24, 40, 64, 128, 176, 304, 512)
    stage_repeats: tuple[int, ...] = (3, 5, 5, 7, 7, 9, 3)
    head_channels: int = 2048
    decoder_channels: tuple[int, int, int, int] = (1024, 512, 256, 128)
    refine_channels: int = 128
    bn_eps: float = 1e-3


def make_divisible(value: float, divisor: int = 8) -> int:
    """gen-efficientnet's channel rounding: nearest multiple of ``divisor``, never more than 10 % down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --------------------------------------------------------------------------- EfficientNet encoder


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow "same" padding (static for stride 1, dynamic otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.conv2d(pad_same(hidden, self.kernel_size[0], self.stride[0]), self.weight, None, self.stride, 0, 1, self.groups)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(F.silu(self.conv_reduce(hidden.mean((2, 3), keepdim=True))))
        return hidden * torch.sigmoid(scale)


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.residual = stride == 1 and in_channels == out_channels
        self.conv_dw = SameConv2d(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels, eps=eps)
        self.se = SqueezeExcite(in_channels, make_divisible(in_channels * SE_RATIO, 1))
        self.conv_pw = SameConv2d(in_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.se(F.silu(self.bn1(self.conv_dw(hidden))))
        out = self.bn2(self.conv_pw(out))
        return out + hidden if self.residual else out


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int, eps: float) -> None:
        super().__init__()
        mid = make_divisible(in_channels * expansion)
        self.residual = stride == 1 and in_channels == out_channels
        self.conv_pw = SameConv2d(in_channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid, eps=eps)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid, eps=eps)
        # The squeeze width follows the block's input channels, not the expanded ones.
        self.se = SqueezeExcite(mid, make_divisible(in_channels * SE_RATIO, 1))
        self.conv_pwl = SameConv2d(mid, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.bn1(self.conv_pw(hidden)))
        out = self.se(F.silu(self.bn2(self.conv_dw(out))))
        out = self.bn3(self.conv_pwl(out))
        return out + hidden if self.residual else out


class EfficientNet(nn.Module):
    """gen-efficientnet's GenEfficientNet without pooling and classifier (``encoder.original_model``)."""

    def __init__(self, config: NormalBaeConfig) -> None:
        super().__init__()
        eps = config.bn_eps
        self.conv_stem = SameConv2d(3, config.stem_channels, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(config.stem_channels, eps=eps)
        stages, in_channels = [], config.stem_channels
        for (separable, kernel, stride, expansion), channels, repeats in zip(
            EFFICIENTNET_STAGES, config.stage_channels, config.stage_repeats
        ):
            blocks = []
            for index in range(repeats):
                step = stride if index == 0 else 1
                blocks.append(
                    DepthwiseSeparable(in_channels, channels, kernel, step, eps) if separable
                    else InvertedResidual(in_channels, channels, kernel, step, expansion, eps)
                )
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(in_channels, config.head_channels, 1)
        # Stored in the file; the decoder reads conv_head's raw output, so bn2 is never applied.
        self.bn2 = nn.BatchNorm2d(config.head_channels, eps=eps)

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every stage's output (strides 2, 4, 8, 16, 16, 32, 32) and conv_head's output (stride 32)."""
        hidden = F.silu(self.bn1(self.conv_stem(image)))
        stages = []
        for stage in self.blocks:
            hidden = stage(hidden)
            stages.append(hidden)
        return stages, self.conv_head(hidden)


class Encoder(nn.Module):
    def __init__(self, config: NormalBaeConfig) -> None:
        super().__init__()
        self.original_model = EfficientNet(config)


# --------------------------------------------------------------------------- decoder


class UpSampleBN(nn.Module):
    """Upsample to the skip's size (bilinear, align_corners), concatenate, two conv-BN-LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(),
        )

    def forward(self, hidden: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        hidden = F.interpolate(hidden, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([hidden, skip], dim=1))


def refine_head(in_channels: int, hidden: int) -> nn.Sequential:
    """Per-pixel MLP (1×1 Conv1d) predicting normal + κ from features and the upsampled coarser prediction."""
    return nn.Sequential(
        nn.Conv1d(in_channels + 4, hidden, 1), nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1), nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1), nn.ReLU(),
        nn.Conv1d(hidden, 4, 1),
    )


def normalise_prediction(raw: torch.Tensor) -> torch.Tensor:
    """(x, y, z) to unit length (+1e-10), κ = elu + 1.01, on dim 1 (B×4×...)."""
    normal, kappa = raw[:, :3], raw[:, 3:]
    length = torch.sqrt((normal**2).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([normal / length, F.elu(kappa) + 1.0 + 0.01], dim=1)


class Decoder(nn.Module):
    def __init__(self, config: NormalBaeConfig) -> None:
        super().__init__()
        stage = config.stage_channels
        d1, d2, d3, d4 = config.decoder_channels
        head = config.head_channels
        self.conv2 = nn.Conv2d(head, head, 1)
        self.up1 = UpSampleBN(head + stage[4], d1)
        self.up2 = UpSampleBN(d1 + stage[2], d2)
        self.up3 = UpSampleBN(d2 + stage[1], d3)
        self.up4 = UpSampleBN(d3 + stage[0], d4)
        self.out_conv_res8 = nn.Conv2d(d2, 4, 3, padding=1)
        self.out_conv_res4 = refine_head(d2, config.refine_channels)
        self.out_conv_res2 = refine_head(d3, config.refine_channels)
        self.out_conv_res1 = refine_head(d4, config.refine_channels)

    def forward(self, stages: list[torch.Tensor], head: torch.Tensor) -> list[torch.Tensor]:
        """Predictions at strides 8, 4, 2 and 1 (each B×4×h×w)."""
        d1 = self.up1(self.conv2(head), stages[4])
        d2 = self.up2(d1, stages[2])
        d3 = self.up3(d2, stages[1])
        d4 = self.up4(d3, stages[0])
        prediction = normalise_prediction(self.out_conv_res8(d2))
        predictions = [prediction]
        for features, refine in ((d2, self.out_conv_res4), (d3, self.out_conv_res2), (d4, self.out_conv_res1)):
            features = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
            coarse = F.interpolate(prediction, scale_factor=2, mode="bilinear", align_corners=True)
            batch, _, height, width = features.shape
            raw = refine(torch.cat([features, coarse], dim=1).reshape(batch, -1, height * width))
            prediction = normalise_prediction(raw).reshape(batch, 4, height, width)
            predictions.append(prediction)
        return predictions


class NormalBaeModel(nn.Module):
    """B×3×H×W ImageNet-normalised RGB → B×4×H×W (unit normal x, y, z; κ)."""

    def __init__(self, config: NormalBaeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NormalBaeConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise ValueError(f"NormalBAE: input height and width must be multiples of 32, found {tuple(image.shape[-2:])}")
        stages, head = self.encoder.original_model(image)
        return self.decoder(stages, head)[-1]
