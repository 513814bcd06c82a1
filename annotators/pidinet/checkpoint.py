"""Loading the published ``table5_pidinet.pth``.

The file is the PiDiNet training script's checkpoint: ``{"epoch", "state_dict", "optimizer"}``, the
weights under ``state_dict`` with DataParallel's ``module.`` prefix. :func:`read_state_dict`
unwraps both; the keys then equal :class:`PiDiNetModel`'s names.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import PiDiNetConfig, PiDiNetModel

ANNOTATOR = "PiDiNet"
WEIGHT_FILE = "table5_pidinet.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (table5_pidinet.pth)"


def load_pidinet_model(path: str | Path, config: PiDiNetConfig | None = None) -> PiDiNetModel:
    """Read, validate and load ``path`` into a :class:`PiDiNetModel` (float32, eval mode, CPU)."""
    config = config or PiDiNetConfig()
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        expected = expected_shapes(PiDiNetModel(config))
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="the PiDiNet edge model (table5_pidinet.pth)")
    return build_and_load(lambda: PiDiNetModel(config), state)
