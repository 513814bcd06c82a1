"""Loading the published ``mlsd_large_512_fp32.pth`` (keys equal :class:`MLSDModel`'s names).

Batch-norm ``num_batches_tracked`` counters are optional: a file without them loads as it does in
``load_state_dict`` (they only matter for training).
"""
from __future__ import annotations

from pathlib import Path

from ..common.checkpoint import load_checked
from .model import MLSDConfig, MLSDModel

ANNOTATOR = "M-LSD"
WEIGHT_FILE = "mlsd_large_512_fp32.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (mlsd_large_512_fp32.pth)"


def load_mlsd_model(path: str | Path, config: MLSDConfig | None = None) -> MLSDModel:
    """Read, validate and load ``path`` into an :class:`MLSDModel` (float32, eval mode, CPU)."""
    return load_checked(
        path, lambda: MLSDModel(config), annotator=ANNOTATOR, architecture="the M-LSD line model (mlsd_large_512_fp32.pth)"
    )
