"""M-LSD straight lines (ControlNet 1.1 ``mlsd``) over image batches.

As controlnet_aux's ``MLSDdetector``: the detection image (RGB plus a channel of ones, scaled to
[-1, 1]) goes through the network at its own size, the segments are decoded
(:func:`decode_segments`), their end points truncated to whole pixels and drawn one pixel wide,
white on black, at the detection size. The map is then cropped and resized to the input's H×W
like every other annotator (area-averaged when shrinking, so thin lines fade rather than vanish).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_mlsd_model
from .decode import decode_segments
from .model import MLSDModel


def draw_segments_truncated(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """Segments drawn white (255) on a black ``H×W`` uint8 canvas, 1 px, end points truncated toward zero."""
    canvas = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in np.trunc(segments).astype(np.int64):
        cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
    return canvas


class MLSDDetector(SingleModelDetector):
    """``MLSDDetector.from_folder(models_dir)(images)`` → B×H×W uint8, white lines on black."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: MLSDModel

    def _maps(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(rgb_0_255[:, :1])
        return self.model(torch.cat([rgb_0_255, ones], dim=1) / 127.5 - 1.0)

    @classmethod
    def load_model(cls, path: str | Path) -> MLSDModel:
        return load_mlsd_model(path)

    @torch.inference_mode()
    def __call__(
        self, images: Any, *, resolution: int = 512, score_threshold: float = 0.1, distance_threshold: float = 0.1,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Line map per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray)."""
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        height, width = padded.shape[1:3]
        # The output maps are small (9 channels at half resolution): decode the whole batch at once.
        maps = torch.from_numpy(self.forward_batches(padded, self._maps, batch_size))
        found = decode_segments(maps, score_threshold=score_threshold, distance_threshold=distance_threshold)
        canvases = np.stack([draw_segments_truncated(lines, height, width) for lines in found])
        return fit.restore(canvases[..., None])[..., 0]
