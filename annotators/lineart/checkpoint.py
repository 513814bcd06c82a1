"""Loading the published ``sk_model.pth`` / ``sk_model2.pth``: keys already equal our names."""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import LineartConfig, LineartGenerator

ANNOTATOR = "Line art"
WEIGHT_FILE = "sk_model.pth"  # realistic
COARSE_WEIGHT_FILE = "sk_model2.pth"  # coarse
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators"


def load_lineart_model(path: str | Path, config: LineartConfig | None = None) -> LineartGenerator:
    """Read, validate and load a line-art generator file (float32, eval mode, CPU)."""
    config = config or LineartConfig()
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        expected = expected_shapes(LineartGenerator(config))
    check_state_dict(
        state, expected, path=path, annotator=ANNOTATOR,
        architecture="a line-art generator (sk_model.pth / sk_model2.pth)",
    )
    return build_and_load(lambda: LineartGenerator(config), state)
