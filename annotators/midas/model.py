"""MiDaS v3.0 DPT-Hybrid (``dpt_hybrid-midas-501f0c75.pt``): a ResNet-50 (BiT) stem feeding a ViT-B/16,
and the DPT decoder.

The encoder is timm's ``vit_base_resnet50_384`` as MiDaS wraps it: a ResNetV2 without pre-activation
(weight-standardised convolutions with TensorFlow "same" padding, GroupNorm) runs three stages
(strides 4, 8, 16); a 1×1 projection turns the stride-16 map into ViT tokens. The decoder reads the
first two ResNet stages directly and two ViT blocks (8 and 11) through a "project" readout.

Parameter names equal the published state dict (``pretrained.model.*`` for the encoder, timm's names
inside it; ``pretrained.act_postprocess{3,4}.*`` for the token reassembly; ``scratch.*`` for the
decoder), so loading needs no renaming. Input: B×3×H×W RGB scaled to [-1, 1], H and W multiples of
32. Output: B×H×W relative inverse depth (≥ 0, larger = nearer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common.dpt import Attention, Mlp, midas_scratch, reassemble, readout_stack
from ..common.layers import pad_same


@dataclass(frozen=True)
class MidasConfig:
    """Sizes of the network; the defaults are the published DPT-Hybrid."""

    stem_channels: int = 64
    stage_depths: tuple[int, ...] = (3, 4, 9)
    stage_channels: tuple[int, ...] = (256, 512, 1024)
    num_groups: int = 32  # GroupNorm groups in the ResNet
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pos_embed_grid: int = 24  # positional embeddings stored for 384×384 (24×24 tokens); resampled
    hooks: tuple[int, int] = (8, 11)  # ViT blocks feeding decoder levels 3 and 4
    features: int = 256
    num_classes: int = 1000  # timm's ImageNet classifier, stored in the file but unused
    layer_norm_eps: float = 1e-6

    @property
    def level_channels(self) -> tuple[int, int, int, int]:
        return (self.stage_channels[0], self.stage_channels[1], self.embed_dim, self.embed_dim)


# --------------------------------------------------------------------------- ResNetV2 (BiT) backbone


class StdConv2dSame(nn.Conv2d):
    """Convolution whose weights are standardised per output channel (zero mean, unit variance)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, eps: float = 1e-8) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        hidden = pad_same(hidden, self.kernel_size[0], self.stride[0])
        return F.conv2d(hidden, weight, None, self.stride)


class GroupNormAct(nn.GroupNorm):
    def __init__(self, num_groups: int, channels: int, act: bool = True) -> None:
        super().__init__(num_groups, channels, eps=1e-5)
        self.act = act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = super().forward(hidden)
        return F.relu(hidden) if self.act else hidden


class Stem(nn.Module):
    def __init__(self, config: MidasConfig) -> None:
        super().__init__()
        self.conv = StdConv2dSame(3, config.stem_channels, 7, stride=2)
        self.norm = GroupNormAct(config.num_groups, config.stem_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.conv(image))
        # Max pool with "same" padding; the input is ≥ 0 after the ReLU, so zero padding equals -inf padding.
        return F.max_pool2d(pad_same(hidden, 3, 2), kernel_size=3, stride=2)


class Downsample(nn.Module):
    def __init__(self, config: MidasConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_channels, out_channels, 1, stride=stride)
        self.norm = GroupNormAct(config.num_groups, out_channels, act=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(hidden))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 convs with GroupNorm, plus the (projected) shortcut, then ReLU."""

    def __init__(self, config: MidasConfig, in_channels: int, out_channels: int, stride: int, first: bool) -> None:
        super().__init__()
        mid = out_channels // 4
        groups = config.num_groups
        # The first block of every stage projects its shortcut (timm's ResNetStage), whatever the sizes.
        self.downsample = Downsample(config, in_channels, out_channels, stride) if first else None
        self.conv1 = StdConv2dSame(in_channels, mid, 1)
        self.norm1 = GroupNormAct(groups, mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = GroupNormAct(groups, mid)
        self.conv3 = StdConv2dSame(mid, out_channels, 1)
        self.norm3 = GroupNormAct(groups, out_channels, act=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shortcut = hidden if self.downsample is None else self.downsample(hidden)
        out = self.norm1(self.conv1(hidden))
        out = self.norm2(self.conv2(out))
        out = self.norm3(self.conv3(out))
        return F.relu(out + shortcut)


class Stage(nn.Module):
    def __init__(self, config: MidasConfig, in_channels: int, out_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Bottleneck(config, in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, i == 0)
              for i in range(depth)]
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.blocks(hidden)


class ResNetV2(nn.Module):
    def __init__(self, config: MidasConfig) -> None:
        super().__init__()
        self.stem = Stem(config)
        stages, in_channels = [], config.stem_channels
        for index, (depth, channels) in enumerate(zip(config.stage_depths, config.stage_channels)):
            stages.append(Stage(config, in_channels, channels, depth, stride=1 if index == 0 else 2))
            in_channels = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (strides 4, 8, 16)."""
        hidden = self.stem(image)
        outputs = []
        for stage in self.stages:
            hidden = stage(hidden)
            outputs.append(hidden)
        return outputs


# --------------------------------------------------------------------------- ViT


class HybridPatchEmbed(nn.Module):
    def __init__(self, config: MidasConfig) -> None:
        super().__init__()
        self.backbone = ResNetV2(config)
        self.proj = nn.Conv2d(config.stage_channels[-1], config.embed_dim, kernel_size=1)


class Block(nn.Module):
    def __init__(self, config: MidasConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class VisionTransformerHybrid(nn.Module):
    """timm's VisionTransformer with the ResNet patch embedding (``pretrained.model`` in the file)."""

    def __init__(self, config: MidasConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_grid**2 + 1, dim))
        self.patch_embed = HybridPatchEmbed(config)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        # The final norm and the classifier are part of the file; the decoder never reads them.
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(dim, config.num_classes)

    def positional_embedding(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.config.pos_embed_grid
        patch_pos = self.pos_embed[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bilinear", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)


class MidasDPTModel(nn.Module):
    """DPT-Hybrid depth: B×3×H×W in [-1, 1] → B×H×W relative inverse depth (≥ 0)."""

    def __init__(self, config: MidasConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MidasConfig()
        dim, features = config.embed_dim, config.features
        channels = config.level_channels
        self.pretrained = nn.Module()
        self.pretrained.model = VisionTransformerHybrid(config)
        self.pretrained.act_postprocess3 = readout_stack(dim, channels[2])
        self.pretrained.act_postprocess4 = readout_stack(
            dim, channels[3], nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1)
        )
        self.scratch = midas_scratch(channels, features)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four decoder inputs: ResNet stages 1 and 2 (strides 4, 8), ViT levels (strides 16, 32)."""
        vit = self.pretrained.model
        rows, cols = image.shape[-2] // 16, image.shape[-1] // 16
        stage1, stage2, stage3 = vit.patch_embed.backbone(image)
        tokens = vit.patch_embed.proj(stage3).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + vit.positional_embedding(rows, cols)
        hooked = {}
        for index, block in enumerate(vit.blocks[: max(self.config.hooks) + 1]):
            tokens = block(tokens)
            if index in self.config.hooks:
                hooked[index] = tokens
        stacks = (self.pretrained.act_postprocess3, self.pretrained.act_postprocess4)
        return [stage1, stage2] + [reassemble(stack, hooked[hook], rows, cols) for stack, hook in zip(stacks, self.config.hooks)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise ValueError(f"MiDaS: input height and width must be multiples of 32, found {tuple(image.shape[-2:])}")
        scratch = self.scratch
        level1, level2, level3, level4 = (
            getattr(scratch, f"layer{index}_rn")(level) for index, level in enumerate(self.encode(image), start=1)
        )
        path = scratch.refinenet4(level4)
        path = scratch.refinenet3(path, level3)
        path = scratch.refinenet2(path, level2)
        path = scratch.refinenet1(path, level1)
        return scratch.output_conv(path).squeeze(1)
