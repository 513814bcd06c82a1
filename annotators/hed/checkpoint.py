"""Loading the published ``ControlNetHED.pth``: its keys already equal :class:`HEDModel`'s names."""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import HEDConfig, HEDModel

ANNOTATOR = "HED soft edge"
WEIGHT_FILE = "ControlNetHED.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (ControlNetHED.pth)"


def load_hed_model(path: str | Path, config: HEDConfig | None = None) -> HEDModel:
    """Read, validate and load ``path`` into a :class:`HEDModel` (float32, eval mode, CPU)."""
    return load_checked(path, lambda: HEDModel(config), annotator=ANNOTATOR, architecture="the ControlNet HED network")
