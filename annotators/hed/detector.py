"""HED soft-edge detection over image batches, at a chosen resolution, aligned back to the input."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_hed_model
from .model import HEDModel

# Feature maps of the first block are 64×H×W floats; 8 frames at 512² keep a forward under ~1 GiB.
DEFAULT_BATCH_SIZE = 8


def safe_step(edges: np.ndarray, steps: int = 2) -> np.ndarray:
    """Quantise to ``steps`` + 1 levels (ControlNet's "safe" HED: fewer faint, noisy edges)."""
    quantised = np.floor(edges.astype(np.float32) * (steps + 1)) / steps
    return np.clip(quantised, 0.0, 1.0)


class HEDDetector(SingleModelDetector):
    """``HEDDetector.from_folder(models_dir)(images)`` → B×H×W float32 edge probabilities in [0, 1]."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: HEDModel

    @classmethod
    def load_model(cls, path: str | Path) -> HEDModel:
        return load_hed_model(path)

    @torch.inference_mode()
    def __call__(
        self, images: Any, *, resolution: int = 512, safe: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Edge map per image. ``images``: B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray) or one image.

        Each frame is resized so its short side is ``resolution``, padded to a multiple of 64,
        run through the network in batches of ``batch_size`` and mapped back to H×W.
        """
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        dtype = self.dtype
        outputs = []
        for start in range(0, len(padded), max(1, batch_size)):
            chunk = torch.from_numpy(padded[start : start + batch_size]).to(self.device)
            rgb = chunk.permute(0, 3, 1, 2).to(dtype)  # the network takes RGB in 0..255
            outputs.append(self.model.edge_probability(rgb).float().cpu().numpy())
        # restore() reads a 4-D array as a batch: give the maps a channel axis.
        edges = fit.restore(np.concatenate(outputs)[..., None], interpolation="linear")[..., 0]
        edges = np.clip(edges, 0.0, 1.0)
        if safe:
            edges = safe_step(edges)
        return edges.astype(np.float32)
