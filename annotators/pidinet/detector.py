"""PiDiNet soft edges and scribbles (ControlNet 1.1 ``softedge_pidinet`` / ``scribble_pidinet`` and
their ``safe`` forms) over image batches.

As controlnet_aux's ``PidiNetDetector``: the network reads **BGR** in [0, 1]; its fused edge
probability is optionally quantised (``safe``: 0, ½, 1), truncated to 8 bits and, for scribbles,
thinned, blurred and thresholded into thick binary strokes, all at the detection size. Soft maps
are resized back to the input's H×W as they are; scribble maps are re-thresholded after the
resize so they stay binary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, restore_binary, safe_step, scribble_batch, to_batch_uint8, to_uint8_truncated
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_pidinet_model
from .model import PiDiNetModel


class PiDiNetDetector(SingleModelDetector):
    """``PiDiNetDetector.from_folder(models_dir)(images)`` → B×H×W uint8 edges (white on black)."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: PiDiNetModel
    # Stage 1 keeps 60 channels at full resolution: 8 frames at 512² stay near 1 GiB.
    accelerator_batch_size = 8

    @classmethod
    def load_model(cls, path: str | Path) -> PiDiNetModel:
        return load_pidinet_model(path)

    def _edge_probability(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        return self.model(rgb_0_255.flip(1) / 255.0)  # the network was trained on BGR

    @torch.inference_mode()
    def __call__(
        self, images: Any, *, resolution: int = 512, safe: bool = False, scribble: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Edge map per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray).

        ``safe`` quantises the probabilities to three levels; ``scribble`` returns binary strokes.
        """
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        edges = self.forward_batches(padded, self._edge_probability, batch_size)
        if safe:
            edges = safe_step(edges)
        maps = to_uint8_truncated(edges)
        if scribble:
            return restore_binary(fit, scribble_batch(maps))
        return fit.restore(maps[..., None])[..., 0]
