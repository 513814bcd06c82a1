"""Loading the published ``ControlNetHED.pth``: its keys already equal :class:`HEDModel`'s names."""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import HEDConfig, HEDModel

ANNOTATOR = "HED soft edge"
WEIGHT_FILE = "ControlNetHED.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (ControlNetHED.pth)"


def load_hed_model(path: str | Path, config: HEDConfig | None = None) -> HEDModel:
    """Read, validate and load ``path`` into a :class:`HEDModel` (float32, eval mode, CPU)."""
    config = config or HEDConfig()
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        expected = expected_shapes(HEDModel(config))
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="the ControlNet HED network")
    return build_and_load(lambda: HEDModel(config), state)
