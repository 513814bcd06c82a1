"""Loading the published ``upernet_global_small.pth`` (an mmsegmentation checkpoint).

The file holds ``{"meta": ..., "state_dict": {...}}``; its keys equal :class:`UniFormerSegmentor`'s
names (``backbone.*``, ``decode_head.*``) plus the training-only auxiliary FCN head
(``auxiliary_head.*``), which inference does not use and the loader leaves out.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .model import UniFormerConfig, UniFormerSegmentor

ANNOTATOR = "UniFormer segmentation"
WEIGHT_FILE = "upernet_global_small.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (upernet_global_small.pth)"
ARCHITECTURE = "the UniFormer-S UperNet ADE20K segmentation model (upernet_global_small.pth)"
TRAINING_ONLY_PREFIX = "auxiliary_head."


def load_uniformer(path: str | Path, config: UniFormerConfig | None = None) -> UniFormerSegmentor:
    """Read, validate and load ``path`` (float32, eval mode, CPU)."""
    config = config or UniFormerConfig()
    state = read_state_dict(path, annotator=ANNOTATOR)
    state = {key: value for key, value in state.items() if not key.startswith(TRAINING_ONLY_PREFIX)}
    with torch.device("meta"):
        expected = expected_shapes(UniFormerSegmentor(config))
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture=ARCHITECTURE)
    return build_and_load(lambda: UniFormerSegmentor(config), state)
