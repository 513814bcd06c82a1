"""Loading the published ``netG.pth`` (keys equal :class:`AnimeLineartUNet`'s names; a
DataParallel ``module.`` prefix is removed by :func:`read_state_dict`)."""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import AnimeLineartConfig, AnimeLineartUNet

ANNOTATOR = "Anime line art"
WEIGHT_FILE = "netG.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (netG.pth)"


def load_lineart_anime_model(path: str | Path, config: AnimeLineartConfig | None = None) -> AnimeLineartUNet:
    """Read, validate and load ``path`` into an :class:`AnimeLineartUNet` (float32, eval mode, CPU)."""
    return load_checked(
        path, lambda: AnimeLineartUNet(config), annotator=ANNOTATOR, architecture="the anime line-art U-Net (netG.pth)"
    )
