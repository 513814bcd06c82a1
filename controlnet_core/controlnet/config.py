"""ControlNetConfig: every architectural number of an ldm-style ControlNet.

The loader infers it from tensor shapes (see formats/infer.py); any field can be overridden.
Head counts are the one thing shapes cannot tell: SD1.x uses 8 heads per attention layer, SD2.x
and SDXL use 64 channels per head. `family` records which convention applies.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class ControlNetConfig:
    family: str = "sd1"
    in_channels: int = 4
    model_channels: int = 320
    hint_channels: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    # One entry per res block of the encoder, level by level (len == sum(num_res_blocks)).
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)
    # Transformer blocks in the middle block; 0 = transformer shell without blocks, -1 = none at all.
    transformer_depth_middle: int = 1
    context_dim: int = 768
    use_linear_projection: bool = False
    # Exactly one of these is used: a fixed head count (SD1.x) or a fixed head width (SD2.x, SDXL).
    num_heads: int | None = 8
    num_head_channels: int | None = None
    adm_in_channels: int | None = None
    norm_groups: int = 32

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.num_res_blocks = tuple(self.num_res_blocks)
        self.transformer_depth = tuple(self.transformer_depth)
        if self.family not in FAMILIES:
            raise ValueError(f"ControlNetConfig.family: expected one of {FAMILIES}, found {self.family!r}")
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError(
                f"ControlNetConfig: num_res_blocks has {len(self.num_res_blocks)} levels but channel_mult has "
                f"{len(self.channel_mult)}"
            )
        if len(self.transformer_depth) != sum(self.num_res_blocks):
            raise ValueError(
                f"ControlNetConfig.transformer_depth: expected {sum(self.num_res_blocks)} entries (one per res block), "
                f"found {len(self.transformer_depth)}"
            )
        if (self.num_heads is None) == (self.num_head_channels is None):
            raise ValueError("ControlNetConfig: set exactly one of num_heads and num_head_channels")

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) of an attention layer with `channels` channels."""
        if self.num_heads is not None:
            if channels % self.num_heads:
                raise ValueError(f"{channels} attention channels do not split into {self.num_heads} heads")
            return self.num_heads, channels // self.num_heads
        if channels % self.num_head_channels:
            raise ValueError(f"{channels} attention channels do not split into heads of {self.num_head_channels}")
        return channels // self.num_head_channels, self.num_head_channels

    @property
    def num_down_residuals(self) -> int:
        """conv_in + every res block + one downsample per level but the last."""
        return 1 + sum(self.num_res_blocks) + len(self.channel_mult) - 1

    def residual_channels(self) -> list[int]:
        """Channels of each down residual in encoder order, then the middle one."""
        channels = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            channels += [mult * self.model_channels] * self.num_res_blocks[level]
            if level != len(self.channel_mult) - 1:
                channels.append(mult * self.model_channels)
        return channels + [self.channel_mult[-1] * self.model_channels]

    def residual_downscale(self) -> list[int]:
        """Spatial downscale factor (relative to the latent) of each down residual, then the middle one."""
        factors, factor = [1], 1
        for level in range(len(self.channel_mult)):
            factors += [factor] * self.num_res_blocks[level]
            if level != len(self.channel_mult) - 1:
                factor *= 2
                factors.append(factor)
        return factors + [factor]

    def replace(self, **overrides) -> "ControlNetConfig":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ControlNetConfig fields {sorted(unknown)}")
        if "num_heads" in overrides and "num_head_channels" not in overrides:
            overrides["num_head_channels"] = None if overrides["num_heads"] is not None else self.num_head_channels
        if "num_head_channels" in overrides and "num_heads" not in overrides:
            overrides["num_heads"] = None if overrides["num_head_channels"] is not None else self.num_heads
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
