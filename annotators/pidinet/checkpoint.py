"""Loading the published ``table5_pidinet.pth``.

The file is the PiDiNet training script's checkpoint: ``{"epoch", "state_dict", "optimizer"}``, the
weights under ``state_dict`` with DataParallel's ``module.`` prefix. :func:`read_state_dict`
unwraps both; the keys then equal :class:`PiDiNetModel`'s names.
"""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import PiDiNetConfig, PiDiNetModel

ANNOTATOR = "PiDiNet"
WEIGHT_FILE = "table5_pidinet.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (table5_pidinet.pth)"


def load_pidinet_model(path: str | Path, config: PiDiNetConfig | None = None) -> PiDiNetModel:
    """Read, validate and load ``path`` into a :class:`PiDiNetModel` (float32, eval mode, CPU)."""
    return load_checked(
        path, lambda: PiDiNetModel(config), annotator=ANNOTATOR, architecture="the PiDiNet edge model (table5_pidinet.pth)"
    )
