"""ZoeDepth ZoeD_N (``ZoeD_M12_N.pt``): MiDaS v3.1 DPT-BEiT-L/16 (384) plus the metric-bins head.

Published file: ``{"model": state_dict}``. ``core.core.`` holds the MiDaS model: timm's BEiT (0.6.7
names: ``q_bias``/``v_bias`` beside a bias-free ``qkv``, layer scales ``gamma_1``/``gamma_2``, a
relative position bias table per block and its stored ``relative_position_index``, and the unused
``fc_norm``/``head`` classifier) under ``pretrained.model.``, the four token reassemblies with
"project" readouts under ``pretrained.act_postprocess{1..4}.`` and the DPT decoder under ``scratch.``.
The metric head (``conv2``, ``seed_bin_regressor``, ``seed_projector``, ``projectors``,
``attractors``, ``conditional_log_binomial``) sits at the top level. Parameter names equal the
published ones, so loading needs no renaming.

:meth:`ZoeDepthModel.forward` takes RGB scaled to [-1, 1] (H, W multiples of 32) and returns metric
depth (metres, far = large) at that size; :meth:`ZoeDepthModel.infer` is the reference ``infer``:
[0, 1] RGB in, reflect padding, resize for the network, horizontal-flip averaging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.dpt import Mlp, midas_scratch, reassemble, readout_stack


@dataclass(frozen=True)
class ZoeConfig:
    """Sizes; the defaults are the published ZoeD_N (BEiT-L/16 at 384, 64 softplus bins, NYU range)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    window: int = 24  # relative position tables stored for 384 / 16 = 24 patches per side
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)
    level_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    features: int = 256
    num_classes: int = 1000  # timm's classifier, stored but unused
    n_bins: int = 64
    bin_embedding_dim: int = 128
    n_attractors: tuple[int, ...] = (16, 8, 4, 1)
    # ZoeD_N is configured with α = 1000, but the reference's unnormed attractor calls its distance
    # function without α/γ, so the function defaults (300, 2) are what the published model runs with.
    attractor_alpha: float = 300.0
    attractor_gamma: int = 2
    min_temp: float = 0.0212
    max_temp: float = 50.0
    # The size the reference resizes its input towards (H, W), keeping the aspect ratio, multiples of 32.
    process_size: tuple[int, int] = (384, 512)


# --------------------------------------------------------------------------- BEiT


def relative_position_index(rows: int, cols: int) -> torch.Tensor:
    """timm's BEiT index into the relative position table for a rows×cols patch grid plus the class token."""
    # Always on the CPU (also while a model is built on the meta device: it is a small integer table).
    cpu = torch.device("cpu")
    coords = torch.stack(torch.meshgrid(torch.arange(rows, device=cpu), torch.arange(cols, device=cpu), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative[:, :, 0] += rows - 1
    relative[:, :, 1] += cols - 1
    relative[:, :, 0] *= 2 * cols - 1
    distances = (2 * rows - 1) * (2 * cols - 1) + 3
    index = torch.zeros((rows * cols + 1,) * 2, dtype=torch.long, device=cpu)
    index[1:, 1:] = relative.sum(-1)
    index[0, :] = distances - 3  # class token → patches
    index[:, 0] = distances - 2  # patches → class token
    index[0, 0] = distances - 1
    return index


class BeitAttention(nn.Module):
    def __init__(self, config: ZoeConfig) -> None:
        super().__init__()
        dim, window = config.embed_dim, config.window
        self.num_heads = config.num_heads
        self.window = window
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2 + 3, config.num_heads))
        # Stored in the published file (timm 0.6 kept it persistent); recomputed for other grids.
        self.register_buffer("relative_position_index", relative_position_index(window, window))
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self, rows: int, cols: int) -> torch.Tensor:
        """heads×(N+1)×(N+1) bias; the stored table is resampled (bilinear) to the grid, as MiDaS v3.1 does."""
        table = self.relative_position_bias_table
        if (rows, cols) == (self.window, self.window):
            index = self.relative_position_index
        else:
            side = 2 * self.window - 1
            grid = table[:-3].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(2 * rows - 1, 2 * cols - 1), mode="bilinear", align_corners=False)
            table = torch.cat([grid.permute(0, 2, 3, 1).reshape(-1, table.shape[-1]), table[-3:]])
            index = relative_position_index(rows, cols).to(table.device)
        count = rows * cols + 1
        return table[index.reshape(-1)].reshape(count, count, -1).permute(2, 0, 1)

    def forward(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        batch, count, dim = tokens.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(tokens, self.qkv.weight, bias).reshape(batch, count, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = self.relative_position_bias(rows, cols).unsqueeze(0).to(qkv.dtype)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(attended.transpose(1, 2).reshape(batch, count, dim))


class BeitBlock(nn.Module):
    def __init__(self, config: ZoeConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BeitAttention(config)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))

    def forward(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        tokens = tokens + self.gamma_1 * self.attn(self.norm1(tokens), rows, cols)
        return tokens + self.gamma_2 * self.mlp(self.norm2(tokens))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=16, stride=16)


class Beit(nn.Module):
    """timm's Beit as MiDaS wraps it (``pretrained.model``): no absolute positions, no final norm."""

    def __init__(self, config: ZoeConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = PatchEmbed(dim)
        self.blocks = nn.ModuleList([BeitBlock(config) for _ in range(config.depth)])
        # timm's mean-pooling classifier: stored in the file, never used by MiDaS.
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, config.num_classes)


# --------------------------------------------------------------------------- MiDaS DPT-BEiT


class MidasBeit(nn.Module):
    """``core.core``: BEiT encoder, token reassembly and the DPT decoder of MiDaS v3.1."""

    def __init__(self, config: ZoeConfig) -> None:
        super().__init__()
        self.config = config
        dim, features, channels = config.embed_dim, config.features, config.level_channels
        self.pretrained = nn.Module()
        self.pretrained.model = Beit(config)
        resamplers = (  # each level's resampling: ×4, ×2, none, ÷2
            nn.ConvTranspose2d(channels[0], channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(channels[1], channels[1], kernel_size=2, stride=2),
            None,
            nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1),
        )
        for level, (out_channels, resample) in enumerate(zip(channels, resamplers), start=1):
            setattr(self.pretrained, f"act_postprocess{level}", readout_stack(dim, out_channels, resample))
        self.scratch = midas_scratch(channels, features)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Relative depth (B×H×W) and the features the metric head reads: the 32-channel map before the
        last convolution, the deepest level (``layer4_rn``) and the four fusion outputs, deep to shallow."""
        beit = self.pretrained.model
        rows, cols = image.shape[-2] // 16, image.shape[-1] // 16
        tokens = beit.patch_embed.proj(image).flatten(2).transpose(1, 2)
        tokens = torch.cat([beit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        levels = []
        for index, block in enumerate(beit.blocks[: max(self.config.hooks) + 1]):
            tokens = block(tokens, rows, cols)
            if index in self.config.hooks:
                stack = getattr(self.pretrained, f"act_postprocess{len(levels) + 1}")
                levels.append(reassemble(stack, tokens, rows, cols))
        scratch = self.scratch
        level1, level2, level3, level4 = (getattr(scratch, f"layer{i}_rn")(level) for i, level in enumerate(levels, 1))
        path4 = scratch.refinenet4(level4, size=level3.shape[2:])
        path3 = scratch.refinenet3(path4, level3, size=level2.shape[2:])
        path2 = scratch.refinenet2(path3, level2, size=level1.shape[2:])
        path1 = scratch.refinenet1(path2, level1)
        head = scratch.output_conv
        hidden = head[3](head[2](head[1](head[0](path1))))
        relative = head[5](head[4](hidden)).squeeze(1)
        return relative, [hidden, level4, path4, path3, path2, path1]


class MidasCore(nn.Module):
    def __init__(self, config: ZoeConfig) -> None:
        super().__init__()
        self.core = MidasBeit(config)


# --------------------------------------------------------------------------- metric bins head


class TwoLayer(nn.Module):
    """``_net``: conv1×1 → ReLU → conv1×1 (→ ``final`` activation), the reference's small MLP blocks."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, final: nn.Module | None = None) -> None:
        super().__init__()
        layers = [nn.Conv2d(in_channels, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, out_channels, 1)]
        self._net = nn.Sequential(*layers + ([final] if final is not None else []))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._net(hidden)


def _resize(hidden: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(hidden, size=tuple(size), mode="bilinear", align_corners=True)


class Attractor(TwoLayer):
    """Softplus attractor points pull the bin centres by the inverse rule dx / (1 + α·dx^γ), averaged."""

    def __init__(self, config: ZoeConfig, count: int) -> None:
        super().__init__(config.bin_embedding_dim, 128, count, nn.Softplus())
        self.alpha = config.attractor_alpha
        self.gamma = config.attractor_gamma

    def forward(self, embedding: torch.Tensor, centres: torch.Tensor, previous_embedding: torch.Tensor) -> torch.Tensor:
        points = self._net(embedding + _resize(previous_embedding, embedding.shape[-2:]))
        centres = _resize(centres, points.shape[-2:])
        dx = points.unsqueeze(2) - centres.unsqueeze(1)  # B×attractors×bins×h×w
        return centres + (dx / (1 + self.alpha * dx.pow(self.gamma))).mean(dim=1)


class LogBinomial(nn.Module):
    def __init__(self, n_classes: int) -> None:
        super().__init__()
        # Both are buffers of the published file.
        self.register_buffer("k_idx", torch.arange(0, n_classes).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([float(n_classes - 1)]).view(1, -1, 1, 1))

    def forward(self, probability: torch.Tensor, temperature: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        probability = probability.unsqueeze(1)
        one_minus = torch.clamp(1 - probability, eps, 1)
        probability = torch.clamp(probability, eps, 1)
        n, k = self.K_minus_1 + 1e-7, self.k_idx + 1e-7
        log_binomial = n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + 1e-7)
        logits = log_binomial + self.k_idx * torch.log(probability) + (self.K_minus_1 - self.k_idx) * torch.log(one_minus)
        return torch.softmax(logits / temperature, dim=1)


class ConditionalLogBinomial(nn.Module):
    """Per pixel, a binomial distribution over the bins with a predicted success probability and temperature."""

    def __init__(self, config: ZoeConfig, in_channels: int) -> None:
        super().__init__()
        self.min_temp, self.max_temp = config.min_temp, config.max_temp
        total = in_channels + config.bin_embedding_dim
        self.log_binomial_transform = LogBinomial(config.n_bins)
        self.mlp = nn.Sequential(nn.Conv2d(total, total // 2, 1), nn.GELU(), nn.Conv2d(total // 2, 4, 1), nn.Softplus())

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        pt = self.mlp(torch.cat([features, condition], dim=1)) + 1e-4
        probability = pt[:, 0] / (pt[:, 0] + pt[:, 1])
        temperature = (pt[:, 2] / (pt[:, 2] + pt[:, 3])).unsqueeze(1)
        temperature = (self.max_temp - self.min_temp) * temperature + self.min_temp
        return self.log_binomial_transform(probability, temperature)


class ZoeDepthModel(nn.Module):
    def __init__(self, config: ZoeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ZoeConfig()
        features, embedding = config.features, config.bin_embedding_dim
        self.core = MidasCore(config)
        self.conv2 = nn.Conv2d(features, features, 1)
        self.seed_bin_regressor = TwoLayer(features, 256, config.n_bins, nn.Softplus())
        self.seed_projector = TwoLayer(features, 128, embedding)
        self.projectors = nn.ModuleList([TwoLayer(features, 128, embedding) for _ in config.n_attractors])
        self.attractors = nn.ModuleList([Attractor(config, count) for count in config.n_attractors])
        self.conditional_log_binomial = ConditionalLogBinomial(config, 32 + 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W RGB in [-1, 1] (H, W multiples of 32) → B×1×H×W metric depth."""
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise ValueError(f"ZoeDepth: input height and width must be multiples of 32, found {tuple(image.shape[-2:])}")
        relative, (last, bottleneck, *blocks) = self.core.core(image)
        bottleneck = self.conv2(bottleneck)
        centres = self.seed_bin_regressor(bottleneck)
        previous = self.seed_projector(bottleneck)
        for projector, attractor, block in zip(self.projectors, self.attractors, blocks):
            embedding = projector(block)
            centres = attractor(embedding, centres, previous)
            previous = embedding
        last = torch.cat([last, _resize(relative.unsqueeze(1), last.shape[2:])], dim=1)
        probabilities = self.conditional_log_binomial(last, _resize(previous, last.shape[-2:]))
        centres = _resize(centres, probabilities.shape[-2:])
        return (probabilities * centres).sum(dim=1, keepdim=True)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The reference's resize: towards ``process_size`` keeping the aspect ratio with the scale nearer
        1 ("minimal"), rounded to multiples of 32."""
        target_h, target_w = self.config.process_size
        scale_h, scale_w = target_h / height, target_w / width
        scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        return (max(32, int(np.round(scale * height / 32) * 32)), max(32, int(np.round(scale * width / 32) * 32)))

    def _infer_padded(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        pad_h, pad_w = int(math.sqrt(height / 2) * 3), int(math.sqrt(width / 2) * 3)
        padded = F.pad(image, [pad_w, pad_w, pad_h, pad_h], mode="reflect")
        resized = F.interpolate(padded, size=self.network_size(*padded.shape[-2:]), mode="bilinear", align_corners=True)
        depth = self(resized * 2.0 - 1.0)  # Normalize(mean 0.5, std 0.5)
        if depth.shape[-2:] != padded.shape[-2:]:
            depth = F.interpolate(depth, size=padded.shape[-2:], mode="bicubic", align_corners=False)
        return depth[:, :, pad_h : pad_h + height, pad_w : pad_w + width]

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """The reference ``infer``: B×3×H×W RGB in [0, 1] → B×1×H×W metric depth, reflect-padded by
        ⌊3·√(side/2)⌋ and averaged with the horizontally flipped prediction."""
        depth = self._infer_padded(image)
        flipped = self._infer_padded(torch.flip(image, dims=[3]))
        return (depth + torch.flip(flipped, dims=[3])) / 2
