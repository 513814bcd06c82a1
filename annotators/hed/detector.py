"""HED soft-edge detection over image batches, at a chosen resolution, aligned back to the input."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, restore_binary, safe_step, scribble_batch, to_batch_uint8, to_uint8_truncated
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_hed_model
from .model import HEDModel


class HEDDetector(SingleModelDetector):
    """``HEDDetector.from_folder(models_dir)(images)`` → B×H×W float32 edge probabilities in [0, 1]."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: HEDModel
    # Feature maps of the first block are 64×H×W floats; 8 frames at 512² keep a forward under ~1 GiB.
    accelerator_batch_size = 8

    @classmethod
    def load_model(cls, path: str | Path) -> HEDModel:
        return load_hed_model(path)

    @torch.inference_mode()
    def __call__(
        self, images: Any, *, resolution: int = 512, safe: bool = False, batch_size: int | None = None
    ) -> np.ndarray:
        """Edge map per image. ``images``: B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray) or one image.

        Each frame is resized so its short side is ``resolution``, padded to a multiple of 64,
        run through the network in batches of ``batch_size`` and mapped back to H×W.
        """
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        # The network takes RGB in 0..255.
        probabilities = self.forward_batches(padded, self.model.edge_probability, batch_size)
        # restore() reads a 4-D array as a batch: give the maps a channel axis.
        edges = fit.restore(probabilities[..., None], interpolation="linear")[..., 0]
        edges = np.clip(edges, 0.0, 1.0)
        if safe:
            edges = safe_step(edges)
        return edges.astype(np.float32)

    @torch.inference_mode()
    def scribble(
        self, images: Any, *, resolution: int = 512, safe: bool = False, batch_size: int | None = None
    ) -> np.ndarray:
        """Fake scribble (ControlNet 1.1 ``scribble_hed``): ``B×H×W`` uint8, white strokes (255) on black.

        As controlnet_aux: the edge probability (sigmoid in float64, optionally ``safe``-quantised)
        is truncated to 8 bits at the detection size, thinned, blurred and thresholded there; the
        binary map is then resized to the input size and re-thresholded so it stays binary.
        """
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        logits = self.forward_batches(padded, self.model.mean_logit, batch_size)
        edges = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        if safe:
            edges = safe_step(edges)
        return restore_binary(fit, scribble_batch(to_uint8_truncated(edges)))
