"""Binary (two-level) map by a gray threshold, or by Otsu's automatic threshold."""
from __future__ import annotations

import cv2
import numpy as np

from .common import fit_to_resolution, gray_to_rgb, map_frames, rgb_to_gray, to_batch_uint8


def binary(
    images: np.ndarray,
    *,
    resolution: int = 512,
    threshold: int = 0,
    invert: bool = True,
) -> np.ndarray:
    """Black/white map, ``B×H×W×3`` uint8 at the input size.

    Pixels brighter than ``threshold`` become white (black with ``invert``, the original ControlNet
    convention: dark strokes turn into white lines). ``threshold`` 0 picks Otsu's threshold per frame.
    """
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(rgb_to_gray(batch)[..., None], resolution)
    flags = cv2.THRESH_BINARY_INV if invert else cv2.THRESH_BINARY

    def one_frame(frame: np.ndarray) -> np.ndarray:
        gray = frame[..., 0]
        if threshold <= 0:
            return cv2.threshold(gray, 0, 255, flags | cv2.THRESH_OTSU)[1]
        return cv2.threshold(gray, int(threshold), 255, flags)[1]

    return gray_to_rgb(fit.restore_binary(map_frames(one_frame, padded)[..., None]))
