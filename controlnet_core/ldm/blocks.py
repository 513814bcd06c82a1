"""Building blocks of the ldm UNet encoder, with the original (CompVis / ComfyUI) parameter names so
original-layout checkpoints load without renaming.

Shapes: feature maps are B×C×H×W; token sequences are B×N×C; `emb` is B×time_embed_dim.
Attention runs through torch's scaled_dot_product_attention (the fastest exact kernel available
on every device).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of shape B×dim, computed in float32 like ldm."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


# Few pixels and many channels: below this many output pixels per sample, with at least this many
# input channels, a CPU float32 3×3 convolution runs as unfold + one GEMM (see Conv2d).
GEMM_CONV_MAX_PIXELS = 64
GEMM_CONV_MIN_CHANNELS = 1024


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and names) whose 3×3 stride-1 convolutions over few pixels with
    many channels run as unfold + one matrix multiply on the CPU.

    oneDNN re-lays out a plain float32 weight on every call; for a 1280×1280×3×3 kernel (59 MB) at
    the 4×4 or 8×8 bottom of the UNet that copy costs more than the arithmetic (measured 57 ms vs
    18 ms at 4×4, 93 ms vs 58 ms at 8×8 on one core). The GEMM reads the weight once, in place.
    Elsewhere the usual convolution is faster and is used."""

    def _runs_as_gemm(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and self.kernel_size == (3, 3)
                and self.stride == (1, 1) and self.padding == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and self.in_channels >= GEMM_CONV_MIN_CHANNELS
                and x.shape[-2] * x.shape[-1] <= GEMM_CONV_MAX_PIXELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._runs_as_gemm(x):
            return super().forward(x)
        batch, _, height, width = x.shape
        columns = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(batch * height * width, -1)  # (B·H·W)×(C·9)
        weight = self.weight.view(self.out_channels, -1).t()
        out = torch.addmm(self.bias, columns, weight) if self.bias is not None else columns @ weight
        # Back to a contiguous B×C×H×W: a channels-last view would spread into every later layer.
        return out.view(batch, height * width, self.out_channels).permute(0, 2, 1).contiguous().view(
            batch, self.out_channels, height, width)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time embedding, twice; 1×1 skip when channels change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, groups: int = 32,
                 device=None, dtype=None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        kw = {"device": device, "dtype": dtype}
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels, **kw), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1, **kw))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels, **kw), nn.SiLU(), nn.Dropout(0.0),
            Conv2d(out_channels, out_channels, 3, padding=1, **kw))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1, **kw))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        kw = {"device": device, "dtype": dtype}
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False, **kw)
        self.to_k = nn.Linear(context_dim, inner, bias=False, **kw)
        self.to_v = nn.Linear(context_dim, inner, bias=False, **kw)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, **kw), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch, tokens, _ = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, device=None, dtype=None) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult, device=device, dtype=dtype), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text context, GEGLU feed-forward; pre-LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.attn1 = CrossAttention(dim, heads, dim_head, **kw)
        self.ff = FeedForward(dim, **kw)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, **kw)
        self.norm1 = nn.LayerNorm(dim, **kw)
        self.norm2 = nn.LayerNorm(dim, **kw)
        self.norm3 = nn.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, projection in (1×1 conv for SD1.x, linear for SD2.x/SDXL), `depth` transformer
    blocks over the H·W tokens, projection out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool, groups: int = 32, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, **kw)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner, **kw)
            self.proj_out = nn.Linear(inner, channels, **kw)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1, **kw)
            self.proj_out = nn.Conv2d(inner, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, **kw) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # B×(H·W)×C
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
