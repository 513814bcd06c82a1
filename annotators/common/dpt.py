"""Building blocks shared by the ViT + DPT depth networks (Depth Anything V2, MiDaS DPT, ZoeDepth).

Module and parameter names follow timm's ViT (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``)
and the DPT decoder of the MiDaS code base (``resConfUnit1``, ``resConfUnit2``, ``out_conv``), which
is what the published checkpoints of all three store.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(attended.transpose(1, 2).reshape(batch, count, dim))


class Mlp(nn.Module):
    """Two linear layers with an exact (erf) GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class ResidualConvUnit(nn.Module):
    """relu → conv3×3 → relu → conv3×3, plus the input."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(F.relu(self.conv1(F.relu(hidden))))
        return residual + hidden


class FeatureFusionBlock(nn.Module):
    """DPT fusion: add the refined skip, refine, upsample (×2 or to ``size``, align_corners), 1×1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        # The deepest block has no skip input, so its resConfUnit1 is stored but never used.
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, hidden: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            hidden = hidden + self.resConfUnit1(skip)
        hidden = self.resConfUnit2(hidden)
        if size is None:
            hidden = F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            hidden = F.interpolate(hidden, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(hidden)


class ProjectReadout(nn.Module):
    """DPT's "project" readout: each patch token concatenated with the class token, Linear + GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat((patches, readout), dim=-1))


def readout_stack(dim: int, out_channels: int, resample: nn.Module | None = None) -> nn.Sequential:
    """MiDaS' ``act_postprocess``: indices are the published keys: 0 the "project" readout, (1 transpose,
    2 unflatten: no weights), 3 the 1×1 projection, 4 the level's resampling (when it has one)."""
    layers: list[nn.Module] = [ProjectReadout(dim), nn.Identity(), nn.Identity(), nn.Conv2d(dim, out_channels, kernel_size=1)]
    return nn.Sequential(*layers + ([resample] if resample is not None else []))


def reassemble(stack: nn.Sequential, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """ViT tokens (class token first) → the level's feature map through a :func:`readout_stack`."""
    patches = stack[0](tokens)
    grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, rows, cols)
    for layer in stack[3:]:
        grid = layer(grid)
    return grid


def midas_scratch(level_channels: tuple[int, ...], features: int) -> nn.Module:
    """MiDaS' decoder (``scratch``): per-level 3×3 convs, four fusion blocks and the depth head
    (conv, ×2 upsample, conv to 32, ReLU, conv to 1, ReLU)."""
    scratch = nn.Module()
    for level, in_channels in enumerate(level_channels, start=1):
        setattr(scratch, f"layer{level}_rn", nn.Conv2d(in_channels, features, 3, padding=1, bias=False))
    for level in range(1, 5):
        setattr(scratch, f"refinenet{level}", FeatureFusionBlock(features))
    scratch.output_conv = nn.Sequential(
        nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(32, 1, kernel_size=1),
        nn.ReLU(True),  # non-negative output
    )
    return scratch


def normalise_images(images_uint8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """B×H×W×3 uint8 → B×3×H×W float, ``(x / 255 - mean) / std`` per channel."""
    image = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, device=image.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=image.device).view(1, 3, 1, 1)
    return (image - mean_t) / std_t
