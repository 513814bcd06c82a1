"""PiDiNet (``table5_pidinet.pth``): pixel-difference convolutions for edge detection.

Four stages of depthwise-separable residual blocks (60, 120, 240, 240 channels; stages 2-4 start
with a 2×2 max pool and a 1×1 shortcut). The first conv and each block's depthwise 3×3 conv is a
*pixel difference* convolution of one of four kinds, in the published "carv4" pattern:

- ``cv``: a plain convolution;
- ``cd`` (central difference): Σ w·(x_neighbour − x_centre) = conv(x, w) − conv(x, Σw);
- ``ad`` (angular difference): each tap minus its clockwise neighbour on the 3×3 ring, as a
  plain 3×3 convolution with kernel w − w[clockwise order];
- ``rd`` (radial difference): a 5×5 kernel whose outer ring holds 8 taps and whose inner ring
  holds their negatives (centre 0). The 8 taps are the flattened 3×3 weight's entries 1-8 (entry 0
  is never used): that is how the published network computes it, and how its weights were trained.

Each stage output goes through a dilation module (CDCM: 1×1 to 24 channels, then four dilated
3×3 convs summed) and a spatial attention module (CSAM), is reduced to one channel, upsampled
to the input size and the four maps are fused by a 1×1 classifier. Input BGR in [0, 1]; the
fused sigmoid is the edge probability. Parameter names equal the published state dict (after
its DataParallel ``module.`` prefix is removed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_DIFFERENCE_KINDS = ("cv", "cd", "ad", "rd")
# The published table-5 model ("carv4"): the op of the first conv, then of the 15 blocks.
CARV4 = ("cd", "ad", "rd", "cv") * 4

# Flattened 3×3 positions: each tap's clockwise neighbour on the ring (the centre pairs with itself).
_CLOCKWISE = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# Where "rd" puts the flattened 3×3 weight's entries 1-8 in a flattened 5×5 kernel (and their negatives).
_RADIAL_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_RADIAL_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


@dataclass(frozen=True)
class PiDiNetConfig:
    """Shape of the network; the defaults are the published ``table5_pidinet.pth``."""

    channels: int = 60  # first stage; ×2 for stage 2, ×4 for stages 3 and 4
    dilation_channels: int = 24  # CDCM / CSAM width
    ops: tuple[str, ...] = CARV4

    def __post_init__(self) -> None:
        if len(self.ops) != 16 or any(op not in PIXEL_DIFFERENCE_KINDS for op in self.ops):
            raise ValueError(f"PiDiNetConfig.ops: expected 16 of {PIXEL_DIFFERENCE_KINDS}, found {self.ops}")


class PixelDifferenceConv(nn.Module):
    """A 3×3 convolution (no bias) computed as a pixel-difference convolution of kind ``op``."""

    def __init__(self, op: str, in_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        if op not in PIXEL_DIFFERENCE_KINDS:
            raise ValueError(f"pixel difference op: expected one of {PIXEL_DIFFERENCE_KINDS}, found {op!r}")
        self.op = op
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default initialisation

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, groups = self.weight, self.groups
        if self.op == "cv":
            return F.conv2d(hidden, weight, padding=1, groups=groups)
        if self.op == "cd":
            centre = F.conv2d(hidden, weight.sum(dim=(2, 3), keepdim=True), groups=groups)
            return F.conv2d(hidden, weight, padding=1, groups=groups) - centre
        flat = weight.flatten(2)
        if self.op == "ad":
            kernel = (flat - flat[:, :, list(_CLOCKWISE)]).view_as(weight)
            return F.conv2d(hidden, kernel, padding=1, groups=groups)
        ring = flat[:, :, 1:]  # "rd"
        kernel = flat.new_zeros(flat.shape[0], flat.shape[1], 25)
        kernel[:, :, list(_RADIAL_OUTER)] = ring
        kernel[:, :, list(_RADIAL_INNER)] = -ring
        return F.conv2d(hidden, kernel.view(flat.shape[0], flat.shape[1], 5, 5), padding=2, groups=groups)


class PDCBlock(nn.Module):
    """[2×2 max pool] → depthwise pixel-difference 3×3 → ReLU → 1×1, plus the (1×1-projected) input."""

    def __init__(self, op: str, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv1 = PixelDifferenceConv(op, in_channels, in_channels, groups=in_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            hidden = self.pool(hidden)
        branch = self.conv2(self.relu2(self.conv1(hidden)))
        if self.stride > 1:
            hidden = self.shortcut(hidden)
        return branch + hidden


class CDCM(nn.Module):
    """Compact dilation module: ReLU, 1×1, then four 3×3 convs with dilation 5, 7, 9, 11, summed."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        for index, rate in enumerate((5, 7, 9, 11), start=1):
            conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, dilation=rate, padding=rate, bias=False)
            setattr(self, f"conv2_{index}", conv)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(self.relu1(hidden))
        return self.conv2_1(hidden) + self.conv2_2(hidden) + self.conv2_3(hidden) + self.conv2_4(hidden)


class CSAM(nn.Module):
    """Compact spatial attention: the input times sigmoid(3×3(1×1 to 4 channels(ReLU(input))))."""

    def __init__(self, channels: int, mid_channels: int = 4) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, mid_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(mid_channels, 1, kernel_size=3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.sigmoid(self.conv2(self.conv1(self.relu1(hidden))))


class MapReduce(nn.Module):
    """1×1 conv to a single edge-logit channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden)


class PiDiNetModel(nn.Module):
    """BGR in [0, 1] (B×3×H×W, sides multiples of 8) → B×H×W fused edge probability."""

    def __init__(self, config: PiDiNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PiDiNetConfig()
        ops = config.ops
        width = config.channels
        self.init_block = PixelDifferenceConv(ops[0], 3, width)
        stage_widths = (width, width * 2, width * 4, width * 4)
        self.stages: list[list[str]] = []  # block attribute names per stage (the published key prefixes)
        in_channels = width
        op_index = 1
        for stage, (stage_width, count) in enumerate(zip(stage_widths, (3, 4, 4, 4)), start=1):
            names = []
            for index in range(1, count + 1):
                stride = 2 if stage > 1 and index == 1 else 1
                names.append(f"block{stage}_{index}")
                setattr(self, names[-1], PDCBlock(ops[op_index], in_channels, stage_width, stride))
                in_channels = stage_width
                op_index += 1
            self.stages.append(names)
        self.dilations = nn.ModuleList(CDCM(channels, config.dilation_channels) for channels in stage_widths)
        self.attentions = nn.ModuleList(CSAM(config.dilation_channels) for _ in stage_widths)
        self.conv_reduces = nn.ModuleList(MapReduce(config.dilation_channels) for _ in stage_widths)
        self.classifier = nn.Conv2d(len(stage_widths), 1, kernel_size=1)

    def forward(self, bgr_0_1: torch.Tensor) -> torch.Tensor:
        height, width = bgr_0_1.shape[-2:]
        hidden = self.init_block(bgr_0_1)
        reduced = []
        for index, names in enumerate(self.stages):
            for name in names:
                hidden = getattr(self, name)(hidden)
            logit = self.conv_reduces[index](self.attentions[index](self.dilations[index](hidden)))
            reduced.append(F.interpolate(logit, (height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(reduced, dim=1)))[:, 0]
