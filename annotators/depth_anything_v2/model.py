"""Depth Anything V2: a DINOv2 ViT encoder (patch 14) and a DPT decoder head.

Published files: ``depth_anything_v2_vits.pth`` (and vitb / vitl). Parameter names equal the
published state dict (``pretrained.*`` for the ViT, ``depth_head.*`` for the DPT head), so loading
needs no key renaming; ``checkpoint.py`` only validates keys and shapes.

The network predicts relative inverse depth (disparity): larger values are nearer the camera.
Input: B×3×H×W, RGB in [0, 1] normalised with the ImageNet mean/std, H and W multiples of 14.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common.dpt import Attention, FeatureFusionBlock, Mlp, normalise_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DepthAnythingV2Config:
    """Encoder and decoder sizes; :meth:`preset` gives the published variants."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 14
    # Positional embeddings are stored for a 518×518 training crop (37×37 patches) and resampled.
    pos_embed_grid: int = 37
    # Encoder blocks whose (normed) outputs feed the four DPT levels.
    intermediate_layers: tuple[int, ...] = (2, 5, 8, 11)
    features: int = 64
    out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    head_hidden_channels: int = 32
    layer_norm_eps: float = 1e-6
    # DINOv2's offset that avoids rounding errors when resampling positional embeddings.
    interpolate_offset: float = 0.1

    @classmethod
    def preset(cls, encoder: str) -> "DepthAnythingV2Config":
        presets = {
            "vits": cls(),
            "vitb": cls(embed_dim=768, num_heads=12, features=128, out_channels=(96, 192, 384, 768)),
            "vitl": cls(
                embed_dim=1024,
                depth=24,
                num_heads=16,
                intermediate_layers=(4, 11, 17, 23),
                features=256,
                out_channels=(256, 512, 1024, 1024),
            ),
        }
        if encoder not in presets:
            raise ValueError(f"Depth Anything V2: unknown encoder {encoder!r}; expected one of {sorted(presets)}")
        return presets[encoder]


# --------------------------------------------------------------------------- DINOv2 encoder


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)  # B×N×C


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.gamma


class Block(nn.Module):
    def __init__(self, config: DepthAnythingV2Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, config: DepthAnythingV2Config) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_grid**2 + 1, dim))
        # Unused at inference, but part of the published state dict (masked-image pretraining).
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def _positional_embedding(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.config.pos_embed_grid
        if rows == grid and cols == grid:
            return self.pos_embed
        class_pos, patch_pos = self.pos_embed[:, :1].float(), self.pos_embed[:, 1:].float()
        offset = self.config.interpolate_offset
        # A scale factor (not a target size) is what DINOv2 passes; it sets the sampling positions,
        # so it is kept for numerical parity with the published model's behaviour.
        patch_pos = F.interpolate(
            patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2),
            scale_factor=((rows + offset) / grid, (cols + offset) / grid),
            mode="bicubic",
            antialias=False,
        )
        if patch_pos.shape[-2:] != (rows, cols):  # pragma: no cover - guarded by the offset
            raise RuntimeError(f"positional embedding resampled to {tuple(patch_pos.shape[-2:])}, not {(rows, cols)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([class_pos, patch_pos], dim=1).to(self.pos_embed.dtype)

    def intermediate_patch_tokens(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normed patch tokens (B×N×C, class token dropped) after each of ``intermediate_layers``."""
        rows, cols = image.shape[-2] // self.config.patch_size, image.shape[-1] // self.config.patch_size
        tokens = self.patch_embed(image)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self._positional_embedding(rows, cols).to(tokens.dtype)
        wanted = set(self.config.intermediate_layers)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                outputs.append(self.norm(tokens)[:, 1:])
        return outputs


# --------------------------------------------------------------------------- DPT head


class DPTScratch(nn.Module):
    """Named ``scratch`` in the published file: per-level 3×3 convs, fusion blocks and output convs."""

    def __init__(self, config: DepthAnythingV2Config) -> None:
        super().__init__()
        features = config.features
        for level, channels in enumerate(config.out_channels, start=1):
            setattr(self, f"layer{level}_rn", nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False))
        for level in range(1, 5):
            setattr(self, f"refinenet{level}", FeatureFusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, config.head_hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(config.head_hidden_channels, 1, kernel_size=1),
            nn.ReLU(True),
        )


class DPTHead(nn.Module):
    def __init__(self, config: DepthAnythingV2Config) -> None:
        super().__init__()
        self.config = config
        dim, channels = config.embed_dim, config.out_channels
        self.projects = nn.ModuleList([nn.Conv2d(dim, out, kernel_size=1) for out in channels])
        # Levels 1..4 end at strides 14/4, 14/2, 14 and 28 relative to the input.
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(channels[1], channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = DPTScratch(config)

    def forward(self, patch_tokens: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        levels = []
        for index, tokens in enumerate(patch_tokens):
            grid = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], rows, cols)
            levels.append(self.resize_layers[index](self.projects[index](grid)))
        scratch = self.scratch
        level1, level2, level3, level4 = (
            getattr(scratch, f"layer{index}_rn")(level) for index, level in enumerate(levels, start=1)
        )
        path = scratch.refinenet4(level4, size=level3.shape[2:])
        path = scratch.refinenet3(path, level3, size=level2.shape[2:])
        path = scratch.refinenet2(path, level2, size=level1.shape[2:])
        path = scratch.refinenet1(path, level1)
        out = scratch.output_conv1(path)
        patch = self.config.patch_size
        out = F.interpolate(out, size=(rows * patch, cols * patch), mode="bilinear", align_corners=True)
        return scratch.output_conv2(out)


class DepthAnythingV2Model(nn.Module):
    """Returns B×H×W relative inverse depth (≥ 0) for a B×3×H×W normalised RGB batch."""

    def __init__(self, config: DepthAnythingV2Config | None = None) -> None:
        super().__init__()
        self.config = config = config or DepthAnythingV2Config()
        self.pretrained = DinoVisionTransformer(config)
        self.depth_head = DPTHead(config)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patch = self.config.patch_size
        if image.shape[-2] % patch or image.shape[-1] % patch:
            raise ValueError(
                f"Depth Anything V2: input height and width must be multiples of {patch}, found {tuple(image.shape[-2:])}"
            )
        rows, cols = image.shape[-2] // patch, image.shape[-1] // patch
        tokens = self.pretrained.intermediate_patch_tokens(image)
        return F.relu(self.depth_head(tokens, rows, cols)).squeeze(1)


def normalise_rgb(images_uint8: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 → B×3×H×W float, ImageNet-normalised (what the encoder was trained on)."""
    return normalise_images(images_uint8, IMAGENET_MEAN, IMAGENET_STD)
