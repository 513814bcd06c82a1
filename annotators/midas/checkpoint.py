"""Loading the published ``dpt_hybrid-midas-501f0c75.pt`` (keys equal :class:`MidasDPTModel`'s names).

The sizes are read from the file (so smaller test files of the same layout load too); the published
file gives :class:`MidasConfig`'s defaults. Heads are taken as 64 channels wide (timm's ViT-B/16),
GroupNorm as 32 groups, and the decoder taps ViT blocks depth-4 and depth-1 (8 and 11), as in MiDaS.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..common.checkpoint import count_indexed, load_checked, require_tensor
from .model import MidasConfig, MidasDPTModel

ANNOTATOR = "MiDaS depth"
ARCHITECTURE = "the MiDaS DPT-Hybrid model (dpt_hybrid-midas-501f0c75.pt)"
WEIGHT_FILE = "dpt_hybrid-midas-501f0c75.pt"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (dpt_hybrid-midas-501f0c75.pt)"
_VIT = "pretrained.model."
_RESNET = _VIT + "patch_embed.backbone."


def config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> MidasConfig:
    """Sizes of the network stored in ``state``; the full key/shape check comes after."""

    def tensor(key: str, ndim: int) -> torch.Tensor:
        return require_tensor(state, key, ndim=ndim, path=path, annotator=ANNOTATOR, architecture=ARCHITECTURE)

    stem = tensor(_RESNET + "stem.conv.weight", 4)
    stage_count = count_indexed(state, _RESNET + "stages.")
    depths = tuple(count_indexed(state, _RESNET + f"stages.{index}.blocks.") for index in range(stage_count))
    channels = tuple(int(tensor(_RESNET + f"stages.{index}.blocks.0.conv3.weight", 4).shape[0]) for index in range(stage_count))
    embed_dim = int(tensor(_VIT + "cls_token", 3).shape[-1])
    depth = count_indexed(state, _VIT + "blocks.")
    positions = int(tensor(_VIT + "pos_embed", 3).shape[1]) - 1
    return MidasConfig(
        stem_channels=int(stem.shape[0]),
        stage_depths=depths,
        stage_channels=channels,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(1, embed_dim // 64),
        mlp_ratio=int(tensor(_VIT + "blocks.0.mlp.fc1.weight", 2).shape[0]) / embed_dim,
        pos_embed_grid=math.isqrt(max(positions, 0)),
        hooks=(max(depth - 4, 0), max(depth - 1, 0)),
        features=int(tensor("scratch.layer1_rn.weight", 4).shape[0]),
        num_classes=int(tensor(_VIT + "head.weight", 2).shape[0]),
    )


def load_midas(path: str | Path) -> MidasDPTModel:
    """Read, validate and load ``path`` into a :class:`MidasDPTModel` (float32, eval mode, CPU)."""
    return load_checked(path, annotator=ANNOTATOR, architecture=ARCHITECTURE, read_config=config_from_state_dict,
                        build=MidasDPTModel)
