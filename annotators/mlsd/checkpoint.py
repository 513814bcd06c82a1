"""Loading the published ``mlsd_large_512_fp32.pth`` (keys equal :class:`MLSDModel`'s names).

Batch-norm ``num_batches_tracked`` counters are optional: a file without them loads as it does in
``load_state_dict`` (they only matter for training).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import (
    build_and_load,
    check_state_dict,
    expected_shapes,
    read_state_dict,
    with_batchnorm_counters,
)
from .model import MLSDConfig, MLSDModel

ANNOTATOR = "M-LSD"
WEIGHT_FILE = "mlsd_large_512_fp32.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (mlsd_large_512_fp32.pth)"


def load_mlsd_model(path: str | Path, config: MLSDConfig | None = None) -> MLSDModel:
    """Read, validate and load ``path`` into an :class:`MLSDModel` (float32, eval mode, CPU)."""
    config = config or MLSDConfig()
    with torch.device("meta"):
        expected = expected_shapes(MLSDModel(config))
    state = with_batchnorm_counters(read_state_dict(path, annotator=ANNOTATOR), expected)
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="the M-LSD line model (mlsd_large_512_fp32.pth)")
    return build_and_load(lambda: MLSDModel(config), state)
