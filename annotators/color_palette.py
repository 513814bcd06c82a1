"""Colour palette map: average colour of coarse cells, for colour-guidance adapters."""
from __future__ import annotations

import cv2
import numpy as np

from .common import fit_to_resolution, map_frames, to_batch_uint8


def color_palette(images: np.ndarray, *, resolution: int = 512, cell_size: int = 64) -> np.ndarray:
    """Flat cells of ``cell_size`` pixels (at the detection resolution) filled with their mean colour."""
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(batch, resolution)
    cell = int(cell_size)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        cells = cv2.resize(frame, (max(1, width // cell), max(1, height // cell)), interpolation=cv2.INTER_AREA)
        return cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)

    # Nearest on the way back keeps the cells flat (no blended colours at cell borders).
    return fit.restore(map_frames(one_frame, padded), interpolation="nearest")
