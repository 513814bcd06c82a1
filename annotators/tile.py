"""Tile / blur maps: the image with its fine detail removed, for the tile ControlNet."""
from __future__ import annotations

import cv2
import numpy as np

from .common import fit_to_resolution, map_frames, to_batch_uint8


def tile(images: np.ndarray, *, resolution: int = 512, downscale_steps: int = 3) -> np.ndarray:
    """Shrink by ``2**downscale_steps`` (area average) and enlarge back (cubic), ``B×H×W×3`` uint8."""
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(batch, resolution)
    factor = 2 ** int(downscale_steps)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        small = cv2.resize(frame, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)

    return fit.restore(map_frames(one_frame, padded))


def blur(images: np.ndarray, *, resolution: int = 512, sigma: float = 5.0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` (pixels at the detection resolution)."""
    batch = to_batch_uint8(images)
    if sigma <= 0:
        return batch.copy()
    padded, fit = fit_to_resolution(batch, resolution)
    blurred = map_frames(lambda frame: cv2.GaussianBlur(frame, (0, 0), float(sigma)), padded, threads=False)
    return fit.restore(blurred)
