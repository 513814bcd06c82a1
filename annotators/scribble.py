"""Scribble maps: XDoG (difference of Gaussians) or plain ink threshold, white strokes on black."""
from __future__ import annotations

import cv2
import numpy as np

from .common import AnnotatorInputError, fit_to_resolution, gray_to_rgb, map_frames, rgb_to_gray, to_batch_uint8

SCRIBBLE_METHODS = ("xdog", "threshold")


def scribble(
    images: np.ndarray,
    *,
    resolution: int = 512,
    method: str = "xdog",
    threshold: int = 16,
    stroke_width: int = 1,
) -> np.ndarray:
    """Scribble-style strokes, ``B×H×W×3`` uint8 at the input size.

    ``xdog``: a pixel is a stroke where a wide blur (σ=5) is brighter than a narrow one (σ=0.5) by
    more than ``threshold`` in every channel, i.e. on the dark side of an edge, as hand drawings are.
    ``threshold``: a pixel is a stroke where its gray value is below ``threshold`` (dark ink on light
    paper; use about 128). ``stroke_width`` thickens strokes by dilation (1 = as detected).
    """
    if method not in SCRIBBLE_METHODS:
        raise AnnotatorInputError(f"method: expected one of {SCRIBBLE_METHODS}, found {method!r}")
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(batch, resolution)
    kernel = np.ones((3, 3), np.uint8)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        if method == "xdog":
            image = frame.astype(np.float32)
            narrow = cv2.GaussianBlur(image, (0, 0), 0.5)
            wide = cv2.GaussianBlur(image, (0, 0), 5.0)
            strokes = (wide - narrow).min(axis=2) > threshold
        else:
            strokes = rgb_to_gray(frame) < threshold
        mask = strokes.astype(np.uint8) * 255
        if stroke_width > 1:
            mask = cv2.dilate(mask, kernel, iterations=int(stroke_width) - 1)
        return mask

    return gray_to_rgb(fit.restore_binary(map_frames(one_frame, padded)[..., None], lines=True))
