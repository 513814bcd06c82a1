"""Loading the published ``sk_model.pth`` / ``sk_model2.pth``: keys already equal our names."""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import LineartConfig, LineartGenerator

ANNOTATOR = "Line art"
WEIGHT_FILE = "sk_model.pth"  # realistic
COARSE_WEIGHT_FILE = "sk_model2.pth"  # coarse
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators"


def load_lineart_model(path: str | Path, config: LineartConfig | None = None) -> LineartGenerator:
    """Read, validate and load a line-art generator file (float32, eval mode, CPU)."""
    return load_checked(
        path, lambda: LineartGenerator(config), annotator=ANNOTATOR,
        architecture="a line-art generator (sk_model.pth / sk_model2.pth)",
    )
