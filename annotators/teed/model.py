"""TEED, the Tiny and Efficient Edge Detector (``5_model.pth``, 58 k parameters).

Three blocks: two double 3×3 convs (the first at stride 2) and one dense layer at 1/4
resolution, fed through skip paths (a strided 1×1 side conv and a 1×1 pre-dense conv). Each
block's output is upsampled to the input size by an "up block" (1×1 conv, Smish, 2× transposed
conv, repeated per octave) into one edge logit map; a "double fusion" (two depthwise 3×3 convs
with Smish) combines the three maps into a fourth. The detector averages all four logits.

The activation is Smish, x·tanh(ln(1 + sigmoid(x))). controlnet_aux feeds RGB in 0..255 with
no normalisation, and so does this annotator. Parameter names equal the published state dict.
"""
from __future__ import annotations

import torch
from torch import nn


def smish(hidden: torch.Tensor) -> torch.Tensor:
    """x · tanh(ln(1 + sigmoid(x))), evaluated with the same operations as the published network."""
    return hidden * torch.tanh(torch.log(1 + torch.sigmoid(hidden)))


class Smish(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return smish(hidden)


class DoubleConvBlock(nn.Module):
    """3×3 conv (optionally strided), Smish, 3×3 conv, optional Smish."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int | None = None, stride: int = 1,
                 use_act: bool = True) -> None:
        super().__init__()
        self.use_act = use_act
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(mid_channels, out_channels or mid_channels, 3, padding=1)
        self.smish = Smish()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.conv2(self.smish(self.conv1(hidden)))
        return self.smish(hidden) if self.use_act else hidden


class DenseLayer(nn.Sequential):
    """(features, skip) → (½ (convs(smish(features)) + skip), skip); the convs keep the size
    (pad 2 then pad 0)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_channels, out_channels, 3, padding=2))
        self.add_module("smish1", Smish())
        self.add_module("conv2", nn.Conv2d(out_channels, out_channels, 3))

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        features, skip = pair
        return 0.5 * (super().forward(smish(features)) + skip), skip


class DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        for index in range(num_layers):
            self.add_module(f"denselayer{index + 1}", DenseLayer(in_channels, out_channels))
            in_channels = out_channels


class UpConvBlock(nn.Module):
    """``octaves`` × (1×1 conv, Smish, 2× transposed conv): 16 channels in between, 1 at the end."""

    _PADDING = {1: 0, 2: 1}  # transposed-conv padding for a kernel of 2**octaves

    def __init__(self, in_channels: int, octaves: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        kernel = 2**octaves
        for index in range(octaves):
            out_channels = 1 if index == octaves - 1 else 16
            layers += [
                nn.Conv2d(in_channels, out_channels, 1),
                Smish(),
                nn.ConvTranspose2d(out_channels, out_channels, kernel, stride=2, padding=self._PADDING[octaves]),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.features(hidden)


class SingleConvBlock(nn.Module):
    """A 1×1 conv (with bias), optionally strided."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden)


class DoubleFusion(nn.Module):
    """Fuses the three edge maps: depthwise 3×3 to 24 channels, depthwise 3×3 again, both summed
    over channels, then Smish."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.DWconv1 = nn.Conv2d(in_channels, in_channels * 8, 3, padding=1, groups=in_channels)
        self.DWconv2 = nn.Conv2d(in_channels * 8, in_channels * 8, 3, padding=1, groups=in_channels * 8)
        self.AF = Smish()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        first = self.DWconv1(self.AF(maps))
        second = self.DWconv2(self.AF(first))
        return smish((second + first).sum(1).unsqueeze(1))


class TEEDModel(nn.Module):
    """RGB 0..255 (B×3×H×W, sides multiples of 8) → four B×1×H×W edge logit maps."""

    def __init__(self) -> None:
        super().__init__()
        self.block_1 = DoubleConvBlock(3, 16, 16, stride=2)
        self.block_2 = DoubleConvBlock(16, 32, use_act=False)
        self.dblock_3 = DenseBlock(1, 32, 48)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.side_1 = SingleConvBlock(16, 32, 2)
        self.pre_dense_3 = SingleConvBlock(32, 48, 1)
        self.up_block_1 = UpConvBlock(16, 1)
        self.up_block_2 = UpConvBlock(32, 1)
        self.up_block_3 = UpConvBlock(48, 2)
        self.block_cat = DoubleFusion(3)

    def forward(self, rgb_0_255: torch.Tensor) -> list[torch.Tensor]:
        block_1 = self.block_1(rgb_0_255)  # 1/2
        block_2 = self.block_2(block_1)  # 1/2
        block_2_down = self.maxpool(block_2)  # 1/4
        block_3, _ = self.dblock_3((block_2_down + self.side_1(block_1), self.pre_dense_3(block_2_down)))
        maps = [self.up_block_1(block_1), self.up_block_2(block_2), self.up_block_3(block_3)]
        return maps + [self.block_cat(torch.cat(maps, dim=1))]

    def mean_logit(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        """B×H×W average of the four logit maps, summed in order then divided (as numpy's mean)."""
        first, second, third, fused = (logits[:, 0] for logits in self(rgb_0_255))
        return (((first + second) + third) + fused) / 4
