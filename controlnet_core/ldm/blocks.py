"""Building blocks of the ldm UNet encoder, with the original (CompVis / ComfyUI) parameter names so
original-layout checkpoints load without renaming.

Every block takes `operations` (see controlnet_core.ops): the layer classes it is built from.

Shapes: feature maps are B×C×H×W; token sequences are B×N×C; `emb` is B×time_embed_dim.
Attention runs through torch's scaled_dot_product_attention (the fastest exact kernel available
on every device).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import default_operations


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of shape B×dim, computed in float32 like ldm."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time embedding, twice; 1×1 skip when channels change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, groups: int = 32,
                 device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        out_channels = out_channels or channels
        kw = {"device": device, "dtype": dtype}
        ops = operations
        self.in_layers = nn.Sequential(
            ops.GroupNorm(groups, channels, **kw), nn.SiLU(), ops.Conv2d(channels, out_channels, 3, padding=1, **kw))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(
            ops.GroupNorm(groups, out_channels, **kw), nn.SiLU(), nn.Dropout(0.0),
            ops.Conv2d(out_channels, out_channels, 3, padding=1, **kw))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else ops.Conv2d(channels, out_channels, 1, **kw))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int, device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        kw = {"device": device, "dtype": dtype}
        self.heads = heads
        self.to_q = operations.Linear(query_dim, inner, bias=False, **kw)
        self.to_k = operations.Linear(context_dim, inner, bias=False, **kw)
        self.to_v = operations.Linear(context_dim, inner, bias=False, **kw)
        self.to_out = nn.Sequential(operations.Linear(inner, query_dim, **kw), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch, tokens, _ = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.net = nn.Sequential(GEGLU(dim, dim * mult, operations=operations, **kw), nn.Dropout(0.0),
                                 operations.Linear(dim * mult, dim, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text context, GEGLU feed-forward; pre-LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, device=None, dtype=None,
                 operations=default_operations) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype, "operations": operations}
        self.attn1 = CrossAttention(dim, heads, dim_head, **kw)
        self.ff = FeedForward(dim, **kw)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, **kw)
        self.norm1 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm3 = operations.LayerNorm(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, projection in (1×1 conv for SD1.x, linear for SD2.x/SDXL), `depth` transformer
    blocks over the H·W tokens, projection out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool, groups: int = 32, device=None, dtype=None, operations=default_operations) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        ops = operations
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = ops.GroupNorm(groups, channels, eps=1e-6, **kw)
        if use_linear:
            self.proj_in = ops.Linear(channels, inner, **kw)
            self.proj_out = ops.Linear(inner, channels, **kw)
        else:
            self.proj_in = ops.Conv2d(channels, inner, 1, **kw)
            self.proj_out = ops.Conv2d(inner, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, operations=ops, **kw) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        # B×(H·W)×C as a contiguous copy, as diffusers and the host make it: a transposed view would send
        # the linear projection down another GEMM layout and change the last bits.
        h = h.movedim(1, -1).flatten(1, 2).contiguous()
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        # contiguous: the reshape is a view with channels-last strides, which then spread to every later
        # block and residual and changed kernels (results ~1e-5 off diffusers/ComfyUI, which copy here too).
        h = h.transpose(1, 2).reshape(batch, -1, height, width).contiguous()
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands `emb` to res blocks and `context` to transformers (ldm's container,
    kept so parameter names stay `input_blocks.N.M.*`)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
