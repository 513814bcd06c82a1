"""Loading the published ``res101.pth`` (LeReS) and ``latest_net_G.pth`` (the LeReS++ merge U-Net).

``res101.pth`` is ``{"depth_model": state_dict, ...}`` (AdelaiDepth's training checkpoint; its other
entries, such as the shift/focal models, are ignored), keys ``[module.]depth_model.*``. Sizes are read
from the file, so smaller test files of the same layout load too. ``latest_net_G.pth`` is a bare state
dict of pix2pix's ``unet_1024``; its depth and width are read from the file as well.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import count_indexed, load_checked, require_tensor
from .model import LeresConfig, LeresModel, MergeConfig, MergeUNet

ANNOTATOR = "LeReS depth"
ARCHITECTURE = "the LeReS depth model (res101.pth)"
WEIGHT_FILE = "res101.pth"
MERGE_ARCHITECTURE = "the LeReS++ merging network (latest_net_G.pth)"
MERGE_WEIGHT_FILE = "latest_net_G.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (res101.pth, latest_net_G.pth)"
_ENCODER = "depth_model.encoder_modules.encoder."
_DECODER = "depth_model.decoder_modules."


def config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> LeresConfig:
    def tensor(key: str, ndim: int) -> torch.Tensor:
        return require_tensor(state, key, ndim=ndim, path=path, annotator=ANNOTATOR, architecture=ARCHITECTURE)

    base = int(tensor(_ENCODER + "conv1.weight", 4).shape[0])
    grouped = tensor(_ENCODER + "layer1.0.conv2.weight", 4)
    width = int(grouped.shape[0])
    groups = max(1, width // max(int(grouped.shape[1]), 1))
    return LeresConfig(
        base_planes=base,
        layers=tuple(count_indexed(state, _ENCODER + f"layer{index}.") for index in range(1, 5)),
        groups=groups,
        width_per_group=max(1, width * 64 // (groups * base)),
        decoder_channels=(
            int(tensor(_DECODER + "ffm0.ftb1.conv1.weight", 4).shape[0]),
            int(tensor(_DECODER + "ffm1.ftb1.conv1.weight", 4).shape[0]),
            int(tensor(_DECODER + "ffm2.ftb1.conv1.weight", 4).shape[0]),
            int(tensor(_DECODER + "conv.conv1.weight", 4).shape[0]),
        ),
    )


def load_leres(path: str | Path) -> LeresModel:
    """Read, validate and load ``path`` into a :class:`LeresModel` (float32, eval mode, CPU)."""
    return load_checked(path, annotator=ANNOTATOR, architecture=ARCHITECTURE, read_config=config_from_state_dict,
                        build=LeresModel)


def merge_config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> MergeConfig:
    first = require_tensor(state, "model.model.0.weight", ndim=4, path=path, annotator=ANNOTATOR, architecture=MERGE_ARCHITECTURE)
    # Every level below the outermost adds one ".model.3" to the deepest down-convolution's key.
    levels = 1 + max((key.count(".model.3") for key in state if key.endswith(".model.1.weight")), default=0) + 1
    return MergeConfig(levels=levels, base_filters=int(first.shape[0]), in_channels=int(first.shape[1]), size=2**levels)


def load_merge_unet(path: str | Path) -> MergeUNet:
    """Read, validate and load ``path`` into a :class:`MergeUNet` (float32, eval mode, CPU)."""
    return load_checked(path, annotator=ANNOTATOR, architecture=MERGE_ARCHITECTURE,
                        read_config=merge_config_from_state_dict, build=MergeUNet)
