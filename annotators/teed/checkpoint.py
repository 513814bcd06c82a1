"""Loading the published TEED weights (``5_model.pth``; keys equal :class:`TEEDModel`'s names)."""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import TEEDModel

ANNOTATOR = "TEED"
WEIGHT_FILE = "5_model.pth"
WEIGHT_SOURCE = "https://huggingface.co/fal-ai/teed (5_model.pth)"


def load_teed_model(path: str | Path) -> TEEDModel:
    """Read, validate and load ``path`` into a :class:`TEEDModel` (float32, eval mode, CPU)."""
    return load_checked(path, TEEDModel, annotator=ANNOTATOR, architecture="the TEED edge model (5_model.pth)")
