"""Loading the published ``netG.pth`` (keys equal :class:`AnimeLineartUNet`'s names; a
DataParallel ``module.`` prefix is removed by :func:`read_state_dict`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import AnimeLineartConfig, AnimeLineartUNet

ANNOTATOR = "Anime line art"
WEIGHT_FILE = "netG.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (netG.pth)"


def load_lineart_anime_model(path: str | Path, config: AnimeLineartConfig | None = None) -> AnimeLineartUNet:
    """Read, validate and load ``path`` into an :class:`AnimeLineartUNet` (float32, eval mode, CPU)."""
    config = config or AnimeLineartConfig()
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        expected = expected_shapes(AnimeLineartUNet(config))
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="the anime line-art U-Net (netG.pth)")
    return build_and_load(lambda: AnimeLineartUNet(config), state)
