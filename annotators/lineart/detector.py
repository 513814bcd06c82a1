"""Line art (ControlNet 1.1 ``lineart_realistic`` / ``lineart_coarse``) over image batches.

As controlnet_aux's ``LineartDetector``: RGB / 255 into the generator, its output × 255 truncated
to 8 bits and inverted, so the map holds **white lines on black**, the way the lineart ControlNet
reads it (its training script feeds ``1 - map``). Frames are scaled to ``resolution``, padded at
the bottom/right to a multiple of 64 and mapped back to the input's H×W.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8, to_uint8_truncated
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, COARSE_WEIGHT_FILE, WEIGHT_FILE, WEIGHT_SOURCE, load_lineart_model
from .model import LineartGenerator


class LineartDetector(SingleModelDetector):
    """``LineartDetector.from_folder(models_dir)(images)`` → B×H×W uint8, white lines on black."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR + " (realistic)"
    weight_source = WEIGHT_SOURCE + f" ({WEIGHT_FILE})"
    model: LineartGenerator
    # The stem and head work on 64×H×W floats: 4 frames at 512² keep a forward near 1 GiB.
    accelerator_batch_size = 4

    @classmethod
    def load_model(cls, path: str | Path) -> LineartGenerator:
        return load_lineart_model(path)

    @torch.inference_mode()
    def __call__(self, images: Any, *, resolution: int = 512, batch_size: int | None = None) -> np.ndarray:
        """Line map per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray)."""
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        page = self.forward_batches(padded, lambda rgb: self.model(rgb / 255.0)[:, 0], batch_size)
        lines = 255 - to_uint8_truncated(page)  # dark-on-white page → white lines on black
        return fit.restore(lines[..., None])[..., 0]


class LineartCoarseDetector(LineartDetector):
    """The same generator with the coarse weights (``sk_model2.pth``): bolder, simpler lines."""

    weight_file = COARSE_WEIGHT_FILE
    annotator = ANNOTATOR + " (coarse)"
    weight_source = WEIGHT_SOURCE + f" ({COARSE_WEIGHT_FILE})"
