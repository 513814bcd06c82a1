"""T2IAdapterConfig: every architectural number of a T2I-Adapter, read from tensor shapes.

Three published architectures (TencentARC/T2I-Adapter):
- full (SD1.4/1.5): PixelUnshuffle(8), conv_in, 4 levels of 2 residual blocks, an average-pool
  downsample before levels 1–3; features 320, 640, 1280, 1280 at latent /1, /2, /4, /8;
- XL (SDXL): PixelUnshuffle(16), the same blocks, but level 1 only widens (no downsample) and
  level 2 downsamples; features 320, 640 at latent /2, 1280, 1280 at latent /4;
- light (SD1.x): PixelUnshuffle(8), per level a 1×1 in_conv to a quarter width, 4 residual blocks
  and a 1×1 out_conv, downsampling before levels 1–3.
"""
from __future__ import annotations

from dataclasses import dataclass

FULL, LIGHT = "full", "light"
SD_UNSHUFFLE, XL_UNSHUFFLE = 8, 16


@dataclass(frozen=True)
class T2IAdapterConfig:
    kind: str                          # FULL or LIGHT
    image_channels: int                # 1 (sketch, canny) or 3
    unshuffle: int                     # 8 (SD1.x) or 16 (SDXL)
    channels: tuple[int, ...]          # output channels of each level (one feature per level)
    downsample: tuple[bool, ...]       # per level: halve the resolution before it
    num_res_blocks: int                # residual blocks per level
    ksize: int = 1                     # full: kernel of in_conv and block2 (1 in every released file)
    use_conv: bool = False             # full: strided 3×3 conv instead of average pooling

    def __post_init__(self) -> None:
        if self.kind not in (FULL, LIGHT):
            raise ValueError(f"T2IAdapterConfig.kind: expected {FULL!r} or {LIGHT!r}, found {self.kind!r}")
        if len(self.downsample) != len(self.channels):
            raise ValueError("T2IAdapterConfig: one downsample flag per level expected")

    @property
    def xl(self) -> bool:
        return self.unshuffle == XL_UNSHUFFLE

    @property
    def family(self) -> str:
        return "sdxl" if self.xl else "sd1"

    @property
    def cin(self) -> int:
        """Channels after the pixel unshuffle."""
        return self.image_channels * self.unshuffle ** 2

    def feature_downscale(self) -> list[int]:
        """Spatial downscale of each feature relative to the latent (image / 8)."""
        factor, out = self.unshuffle // 8, []
        for down in self.downsample:
            factor *= 2 if down else 1
            out.append(factor)
        return out

    @property
    def variant(self) -> str:
        if self.kind == LIGHT:
            return "light"
        return "XL" if self.xl else "full"
