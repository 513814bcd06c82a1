"""ControlNeXtConfig: which released module a file holds, and the variant it runs as.

Group counts are not stored in the files: they are fixed by each architecture. Module A serves SDXL
and the new SD1.5 recipe with identical keys and shapes, so its variant is decided by the base
model (or by a companion UNet subset); module B is always the old SD1.5 inference module.
"""
from __future__ import annotations

from dataclasses import dataclass

MODULE_A, MODULE_B = "A", "B"
SDXL, SD15, SD15_OLD = "sdxl", "sd15", "sd15_old"
VARIANTS = (SDXL, SD15, SD15_OLD)
VARIANT_FAMILIES = {SDXL: "sdxl", SD15: "sd1", SD15_OLD: "sd1"}
VARIANT_NAMES = {SDXL: "SDXL", SD15: "SD1.5", SD15_OLD: "SD1.5 (old inference module)"}


@dataclass(frozen=True)
class ControlNeXtConfig:
    module: str                        # MODULE_A or MODULE_B
    variant: str | None = None         # SDXL, SD15, SD15_OLD, or None while module A awaits its base model
    time_embed_dim: int = 256
    in_channels: tuple[int, ...] = (128, 128)
    out_channels: tuple[int, ...] = (128, 256)
    groups: tuple[int, ...] = (4, 8)
    final_out_channels: int = 320

    def __post_init__(self) -> None:
        if self.module not in (MODULE_A, MODULE_B):
            raise ValueError(f"ControlNeXtConfig.module: expected {MODULE_A!r} or {MODULE_B!r}, found {self.module!r}")
        if self.variant is not None and self.variant not in VARIANTS:
            raise ValueError(f"ControlNeXtConfig.variant: expected one of {VARIANTS}, found {self.variant!r}")
        if self.module == MODULE_B and self.variant not in (None, SD15_OLD):
            raise ValueError(f"ControlNeXt module B is the old SD1.5 inference module, not {self.variant!r}")


MODULE_A_CONFIG = ControlNeXtConfig(MODULE_A)
MODULE_B_CONFIG = ControlNeXtConfig(MODULE_B, SD15_OLD, in_channels=(3, 128, 256), out_channels=(128, 256, 256),
                                    groups=(1, 8, 8), final_out_channels=1280)
