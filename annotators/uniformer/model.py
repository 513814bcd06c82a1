"""UniFormer-S backbone with an UperNet head: ADE20K semantic segmentation (150 classes).

Published file: ``upernet_global_small.pth`` (lllyasviel/Annotators), an mmsegmentation checkpoint
of UniFormer (Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual
Recognition") with the "global" attention variant, trained on ADE20K.

- Backbone, four stages at strides 4, 8, 16, 32 (64, 128, 320, 512 channels; 3, 4, 8, 3 blocks).
  Each stage starts with a patch embedding (a strided conv, then LayerNorm over channels). Stages 1-2
  are convolution blocks: a depthwise 3×3 position embedding, then "local relation aggregation"
  (BatchNorm, 1×1 conv, depthwise 5×5 conv, 1×1 conv) and a 1×1-conv MLP, both residual. Stages 3-4
  are attention blocks: the same position embedding, then global multi-head self-attention over all
  positions (64 channels per head) and an MLP, pre-LayerNorm, residual. Each stage's output passes a
  LayerNorm (eps 1e-6) before the head.
- UperNet head (mmsegmentation's UPerHead): a pyramid pooling module on the last stage (average
  pools to 1, 2, 3, 6 cells, 1×1 conv-BN-ReLU each, upsampled and concatenated with the stage, then a
  3×3 conv-BN-ReLU), an FPN over the four stages (1×1 lateral and 3×3 output conv-BN-ReLUs, top-down
  bilinear sums), the four FPN levels upsampled to stride 4, concatenated, fused by a 3×3
  conv-BN-ReLU, and a 1×1 classifier: 150 logits at stride 4.

Module and parameter names follow the published keys (``backbone.blocks3.0.attn.qkv.weight``,
``decode_head.psp_modules.0.1.conv.weight``); the checkpoint's training-only auxiliary FCN head
is not part of this network (the loader skips it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UniFormerConfig:
    """Defaults are the published UniFormer-S "global" + UperNet ADE20K model."""

    embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512)
    depths: tuple[int, int, int, int] = (3, 4, 8, 3)
    head_dim: int = 64
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    head_channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    num_classes: int = 150
    batch_norm_eps: float = 1e-5

    @property
    def stride(self) -> int:
        return 32  # 4 × 2 × 2 × 2


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a B×C×H×W map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """A ``patch``×``patch`` stride-``patch`` conv, then LayerNorm over the channels."""

    def __init__(self, in_channels: int, out_channels: int, patch: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(out_channels, eps=1e-5)  # the reference's PatchEmbed uses LayerNorm's default eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvMlp(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Mlp(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """Stages 1-2: local relation aggregation by convolutions (the reference's ``CBlock``)."""

    def __init__(self, channels: int, mlp_ratio: float) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.attn = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels, int(channels * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the reference
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, channels))


class AttentionBlock(nn.Module):
    """Stages 3-4: global self-attention over all positions (the reference's ``SABlock``)."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float, qkv_bias: bool, eps: float) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.LayerNorm(channels, eps=eps)
        self.attn = SelfAttention(channels, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(channels, eps=eps)
        self.mlp = Mlp(channels, int(channels * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class UniFormerBackbone(nn.Module):
    """Four feature maps at strides 4, 8, 16, 32, each after its LayerNorm."""

    def __init__(self, config: UniFormerConfig) -> None:
        super().__init__()
        dims, depths = config.embed_dims, config.depths
        eps = config.layer_norm_eps
        inputs = (3, *dims[:3])
        for stage, (in_channels, channels, depth, patch) in enumerate(zip(inputs, dims, depths, (4, 2, 2, 2)), 1):
            setattr(self, f"patch_embed{stage}", PatchEmbed(in_channels, channels, patch, eps))
            if stage <= 2:
                blocks = [ConvBlock(channels, config.mlp_ratio) for _ in range(depth)]
            else:
                heads = channels // config.head_dim
                blocks = [AttentionBlock(channels, heads, config.mlp_ratio, config.qkv_bias, eps) for _ in range(depth)]
            setattr(self, f"blocks{stage}", nn.ModuleList(blocks))
            setattr(self, f"norm{stage}", ChannelLayerNorm(channels, eps=eps))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in range(1, 5):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"blocks{stage}"):
                x = block(x)
            features.append(getattr(self, f"norm{stage}")(x))
        return features


class ConvBnRelu(nn.Module):
    """mmcv's ConvModule with BatchNorm and ReLU (``conv`` without bias, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UperHead(nn.Module):
    """mmsegmentation's UPerHead: pyramid pooling on the last stage, an FPN, fusion, classifier."""

    def __init__(self, config: UniFormerConfig) -> None:
        super().__init__()
        channels, eps = config.head_channels, config.batch_norm_eps
        last = config.embed_dims[-1]
        self.pool_scales = config.pool_scales
        self.psp_modules = nn.ModuleList(
            # (pool, conv) pairs: the published keys index the conv as ``psp_modules.N.1``
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBnRelu(last, channels, 1, eps)) for scale in config.pool_scales
        )
        self.bottleneck = ConvBnRelu(last + len(config.pool_scales) * channels, channels, 3, eps)
        self.lateral_convs = nn.ModuleList(ConvBnRelu(dim, channels, 1, eps) for dim in config.embed_dims[:-1])
        self.fpn_convs = nn.ModuleList(ConvBnRelu(channels, channels, 3, eps) for _ in config.embed_dims[:-1])
        self.fpn_bottleneck = ConvBnRelu(len(config.embed_dims) * channels, channels, 3, eps)
        self.conv_seg = nn.Conv2d(channels, config.num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        last = features[-1]
        pooled = [_resize(module(last), last.shape[2:]) for module in self.psp_modules]
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.bottleneck(torch.cat([last, *pooled], dim=1)))
        for level in range(len(laterals) - 1, 0, -1):  # top-down: each level plus the one above, upsampled
            laterals[level - 1] = laterals[level - 1] + _resize(laterals[level], laterals[level - 1].shape[2:])
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outputs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outputs[0], *(_resize(out, size) for out in outputs[1:])], dim=1))
        return self.conv_seg(fused)


class UniFormerSegmentor(nn.Module):
    """Input: B×3×H×W, mean/std-normalised (H, W multiples of 32). Output: B×150×H/4×W/4 class logits."""

    def __init__(self, config: UniFormerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UniFormerConfig()
        self.backbone = UniFormerBackbone(config)
        self.decode_head = UperHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))
