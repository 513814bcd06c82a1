"""ControlNeXtModel: the lightweight ControlNeXt control module, with the released parameter names.

Two released architectures (dvlab-research/ControlNeXt):

- module A (SDXL, and the new SD1.5 recipe; ~3.5M parameters): a strided conv embedding
  (3→64→64→128, GroupNorm(2) + ReLU after each conv), two diffusers ResnetBlock2D (128→128 in
  groups of 4, 128→256 in groups of 8, eps 1e-6) each followed by a strided 3×3 conv, a residual
  conv pair (conv, ReLU, GroupNorm(8), conv, GroupNorm(8)) and a 1×1 conv to 320 channels;
- module B (the old SD1.5 inference module, ~5.3M): three ResnetBlock2D straight on the image
  (3→128 in 1 group, 128→256 and 256→256 in groups of 8), each followed by a strided conv, a
  conv-ReLU-conv pair (not residual) and a 1×1 conv to 1280 channels; its `scale` is learned and
  stored in the file.

Both take the control image in [0, 1] (B×3×8h×8w) and the UNet's timestep, and return a feature at
the latent size (320 or 1280 channels). Where that feature enters the UNet, and how it is
cross-normalised against the hidden state there, depends on the variant (see `inject`):

| variant  | module | where                                  | order          | eps   | scale          |
|----------|--------|----------------------------------------|----------------|-------|----------------|
| sdxl     | A      | after conv_in (input block 0)          | norm, then pool| 1e-12 | strength       |
| sd15     | A      | after down block 0 (input block 3)     | pool, then norm| 1e-12 | strength       |
| sd15_old | B      | after the middle block                 | pool, then norm| 1e-12 | learned · strength |

Cross-normalisation (the released code, not the paper's formula): per sample over (C, H, W),
`c = (c − mean(c)) · std(h) / (std(c) + eps) + mean(h)` with torch's unbiased std. The skip that
the UNet stores at that block is not changed.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ControlNetError, InputError
from ..fast import unique_rows
from ..ldm.blocks import timestep_embedding
from ..ops import default_operations
from ..protocol import (Addition, ControlModel, HintSpec, Target, UNetCall, UNetLayout, WeightPatch, family_name,
                        take_frames)
from .config import MODULE_A, SD15, SD15_OLD, SDXL, VARIANT_FAMILIES, VARIANT_NAMES, ControlNeXtConfig

TIME_PROJ_DIM = 128
CROSS_NORM_EPS = 1e-12


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D with its parameter names: GroupNorm-SiLU-conv, plus the projected
    time embedding, then GroupNorm-SiLU-conv; a 1×1 shortcut when the channels change."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, operations,
                 eps: float = 1e-6, **kw) -> None:
        super().__init__()
        self.norm1 = operations.GroupNorm(groups, in_channels, eps=eps, **kw)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, 1, 1, **kw)
        self.time_emb_proj = operations.Linear(temb_channels, out_channels, **kw)
        self.norm2 = operations.GroupNorm(groups, out_channels, eps=eps, **kw)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, 1, 1, **kw)
        self.conv_shortcut = operations.Conv2d(in_channels, out_channels, 1, 1, 0, **kw) \
            if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class StridedConv(nn.Module):
    """diffusers' Downsample2D(use_conv=True, padding=1): a 3×3 stride-2 conv named `conv`."""

    def __init__(self, channels: int, operations, **kw) -> None:
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, 2, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, operations, **kw) -> None:
        super().__init__()
        self.linear_1 = operations.Linear(in_channels, out_channels, **kw)
        self.linear_2 = operations.Linear(out_channels, out_channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def cross_normalize(control: torch.Tensor, hidden: torch.Tensor, eps: float = CROSS_NORM_EPS) -> torch.Tensor:
    """Give `control` the per-sample mean and (unbiased) std of `hidden`, over (C, H, W)."""
    dims = tuple(range(1, hidden.ndim))
    mean_h, std_h = hidden.mean(dim=dims, keepdim=True), hidden.std(dim=dims, keepdim=True)
    mean_c, std_c = control.mean(dim=dims, keepdim=True), control.std(dim=dims, keepdim=True)
    return (control - mean_c) * (std_h / (std_c + eps)) + mean_h


class ControlNeXtModel(ControlModel):
    """A ControlNeXt module as a control system: one slot (its feature); it runs every step (it reads
    the timestep) and adds a function of the hidden state to the stream; its companion UNet weight
    subset is returned by `unet_weight_patches`."""

    system = "ControlNeXt"
    soft_weights = None  # one feature: no per-block weights

    def __init__(self, config: ControlNeXtConfig, device=None, dtype=None, operations=default_operations,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        kw = {"device": device, "dtype": dtype}
        ops = operations
        self.time_embedding = TimestepEmbedding(TIME_PROJ_DIM, config.time_embed_dim, ops, **kw)
        if config.module == MODULE_A:
            self.embedding = nn.Sequential(
                ops.Conv2d(3, 64, 3, 2, 1, **kw), ops.GroupNorm(2, 64, **kw), nn.ReLU(),
                ops.Conv2d(64, 64, 3, 1, 1, **kw), ops.GroupNorm(2, 64, **kw), nn.ReLU(),
                ops.Conv2d(64, 128, 3, 1, 1, **kw), ops.GroupNorm(2, 128, **kw), nn.ReLU())
        self.down_res = nn.ModuleList(
            ResnetBlock2D(cin, cout, config.time_embed_dim, groups, ops, **kw)
            for cin, cout, groups in zip(config.in_channels, config.out_channels, config.groups))
        self.down_sample = nn.ModuleList(StridedConv(c, ops, **kw) for c in config.out_channels)
        last = config.out_channels[-1]
        if config.module == MODULE_A:
            self.mid_convs = nn.ModuleList([
                nn.Sequential(ops.Conv2d(last, last, 3, 1, 1, **kw), nn.ReLU(), ops.GroupNorm(8, last, **kw),
                              ops.Conv2d(last, last, 3, 1, 1, **kw), ops.GroupNorm(8, last, **kw)),
                ops.Conv2d(last, config.final_out_channels, 1, **kw)])
        else:
            self.mid_convs = nn.ModuleList([
                nn.Sequential(ops.Conv2d(last, last, 3, 1, 1, **kw), nn.ReLU(), ops.Conv2d(last, last, 3, 1, 1, **kw)),
                ops.Conv2d(last, config.final_out_channels, 1, **kw)])
            self.scale = nn.Parameter(torch.ones((), **kw))
        self.unet_patches: dict[str, WeightPatch] = {}

    # ---- architecture ----------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """B×3×8h×8w image in [0, 1] and B timesteps → B×C×h×w feature."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise InputError(f"{self.label} control image: expected B×3×H×W, found {tuple(image.shape)}")
        dtype = self.dtype
        timesteps = timesteps.reshape(-1).expand(image.shape[0]) if timesteps.numel() == 1 else timesteps.reshape(-1)
        emb = self.time_embedding(timestep_embedding(timesteps, TIME_PROJ_DIM).to(dtype))
        x = image.to(dtype)
        if self.config.module == MODULE_A:
            x = self.embedding(x)
        for res, down in zip(self.down_res, self.down_sample):
            x = down(res(x, emb))
        if self.config.module == MODULE_A:
            x = self.mid_convs[0](x) + x
        else:
            x = self.mid_convs[0](x)
        return self.mid_convs[1](x)

    # ---- the control-system protocol ---------------------------------------------------------------
    @property
    def family(self) -> str:
        variant = self.config.variant
        return VARIANT_FAMILIES[variant] if variant else "sd1 or sdxl"

    @property
    def variant(self) -> str:
        return f"ControlNeXt {VARIANT_NAMES.get(self.config.variant, 'SDXL / SD1.5 module (decided by the base model)')}"

    @property
    def slots(self) -> tuple[str, ...]:
        return ("feature",)

    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        return HintSpec(latent_height * 8, latent_width * 8, 3)

    def variant_for(self, layout: UNetLayout | None) -> str:
        """The variant this module runs as on `layout`: fixed by the file (module B, or a companion UNet
        subset), else decided by the base model's family (module A serves SDXL and SD1.5)."""
        variant = self.config.variant
        if variant is None:
            family = layout.family if layout is not None else None
            variant = {"sdxl": SDXL, "sd1": SD15}.get(family)
            if variant is None:
                where = f"{layout.name} ({family_name(family)})" if layout is not None else "an unknown base model"
                raise ControlNetError(f"{self.label}: this ControlNeXt module serves SDXL and SD1.5 bases, not "
                                      f"{where}; pass the base model (or variant='sdxl'/'sd15' when loading)")
        return variant

    def check_fits(self, layout: UNetLayout) -> None:
        variant = self.variant_for(layout)
        if layout.family is not None and layout.family != VARIANT_FAMILIES[variant]:
            raise ControlNetError(f"{self.label} ({VARIANT_NAMES[variant]}) does not fit {layout.name} "
                                  f"({family_name(layout.family)}): use a ControlNeXt made for "
                                  f"{family_name(layout.family)}")
        channels = self._target_channels(variant, layout)
        if channels != self.config.final_out_channels:
            raise ControlNetError(f"{self.label} ({VARIANT_NAMES[variant]}) adds {self.config.final_out_channels} "
                                  f"channels where {layout.name} has {channels}")

    @staticmethod
    def _target(variant: str) -> Target:
        return {SDXL: Target.stream(0), SD15: Target.stream(3), SD15_OLD: Target.stream_middle()}[variant]

    def _target_channels(self, variant: str, layout: UNetLayout) -> int:
        target = self._target(variant)
        return layout.middle_channels if target.block is None else layout.block_channels[target.block]

    def additions(self, call: UNetCall, prepared: torch.Tensor, frames: torch.Tensor) -> list[Addition]:
        variant = self.variant_for(call.layout)
        shared = unique_rows(call, frames, ("timesteps",))  # the feature reads the image and the timestep only
        if shared is None:
            feature = self(take_frames(prepared, frames), call.timesteps)
        else:  # cond and uncond rows (and latents of one frame) share it: computed once per distinct row
            representatives, group = (torch.tensor(rows, dtype=torch.long) for rows in shared)
            feature = self(take_frames(prepared, frames.index_select(0, representatives)),
                           call.timesteps.index_select(0, representatives.to(call.timesteps.device)))
            feature = feature.index_select(0, group.to(feature.device))
        scale = self.scale if self.config.module != MODULE_A else None

        def inject(hidden: torch.Tensor) -> torch.Tensor:
            """What ControlNeXt adds to `hidden` (the stream at its point), before the strength."""
            control = feature
            if variant == SDXL:  # normalise, then pool (the released SDXL code)
                control = cross_normalize(control.to(hidden), hidden)
                control = F.adaptive_avg_pool2d(control, hidden.shape[-2:])
            else:  # SD1.5 recipes: pool, then normalise
                control = F.adaptive_avg_pool2d(control, hidden.shape[-2:]).to(hidden)
                control = cross_normalize(control, hidden)
            return control if scale is None else control * scale.to(control)

        return [Addition(self._target(variant), 0, inject)]

    def unet_weight_patches(self) -> dict[str, WeightPatch]:
        return dict(self.unet_patches)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
