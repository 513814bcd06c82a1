"""TEED soft edges (controlnet_aux's ``TEEDdetector``; ControlNet softedge / MistoLine style maps).

As controlnet_aux: RGB in 0..255 into the network, the four logit maps averaged, a float64
sigmoid, ``safe_steps`` quantisation (0 = off) and 8-bit truncation at the detection size; the
map is then cropped and resized to the input's H×W. White edges on black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, safe_step, to_batch_uint8, to_uint8_truncated
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_teed_model
from .model import TEEDModel


class TEEDDetector(SingleModelDetector):
    """``TEEDDetector.from_folder(models_dir)(images)`` → B×H×W uint8 edges (white on black)."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: TEEDModel

    @classmethod
    def load_model(cls, path: str | Path) -> TEEDModel:
        return load_teed_model(path)

    @torch.inference_mode()
    def __call__(
        self, images: Any, *, resolution: int = 512, safe_steps: int = 2, batch_size: int | None = None
    ) -> np.ndarray:
        """Edge map per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray).

        ``safe_steps`` > 0 quantises the probabilities to ``safe_steps`` + 1 levels.
        """
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        logits = self.forward_batches(padded, self.model.mean_logit, batch_size)
        edges = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        if safe_steps:
            edges = safe_step(edges, safe_steps)
        return fit.restore(to_uint8_truncated(edges)[..., None])[..., 0]
