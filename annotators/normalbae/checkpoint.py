"""Loading the published ``scannet.pt`` (``{"model": state_dict}``, keys equal :class:`NormalBaeModel`'s).

Sizes are read from the file (so smaller test files of the same layout load too); the published file
gives :class:`NormalBaeConfig`'s defaults. Kernel sizes, strides and expansions are EfficientNet's.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import count_indexed, load_checked, require_tensor
from .model import EFFICIENTNET_STAGES, NormalBaeConfig, NormalBaeModel

ANNOTATOR = "NormalBAE"
ARCHITECTURE = "the NormalBAE model (scannet.pt)"
WEIGHT_FILE = "scannet.pt"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (scannet.pt)"
_ENCODER = "encoder.original_model."


def config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> NormalBaeConfig:
    def channels(key: str, ndim: int = 4) -> int:
        return int(require_tensor(state, key, ndim=ndim, path=path, annotator=ANNOTATOR, architecture=ARCHITECTURE).shape[0])

    stem = channels(_ENCODER + "conv_stem.weight")
    repeats, stage_channels = [], []
    for index, (separable, *_rest) in enumerate(EFFICIENTNET_STAGES):
        repeats.append(count_indexed(state, _ENCODER + f"blocks.{index}."))
        last_norm = "bn2" if separable else "bn3"
        stage_channels.append(channels(_ENCODER + f"blocks.{index}.0.{last_norm}.weight", ndim=1))
    return NormalBaeConfig(
        stem_channels=stem,
        stage_channels=tuple(stage_channels),
        stage_repeats=tuple(repeats),
        head_channels=channels(_ENCODER + "conv_head.weight"),
        decoder_channels=tuple(channels(f"decoder.up{level}._net.0.weight") for level in range(1, 5)),
        refine_channels=channels("decoder.out_conv_res4.0.weight", ndim=3),
    )


def load_normalbae(path: str | Path) -> NormalBaeModel:
    """Read, validate and load ``path`` into a :class:`NormalBaeModel` (float32, eval mode, CPU)."""
    return load_checked(path, annotator=ANNOTATOR, architecture=ARCHITECTURE, read_config=config_from_state_dict,
                        build=NormalBaeModel)
