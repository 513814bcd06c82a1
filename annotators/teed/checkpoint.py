"""Loading the published TEED weights (``5_model.pth``; keys equal :class:`TEEDModel`'s names)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import TEEDModel

ANNOTATOR = "TEED"
WEIGHT_FILE = "5_model.pth"
WEIGHT_SOURCE = "https://huggingface.co/fal-ai/teed (5_model.pth)"


def load_teed_model(path: str | Path) -> TEEDModel:
    """Read, validate and load ``path`` into a :class:`TEEDModel` (float32, eval mode, CPU)."""
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        expected = expected_shapes(TEEDModel())
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="the TEED edge model (5_model.pth)")
    return build_and_load(TEEDModel, state)
