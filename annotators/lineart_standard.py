"""Line art without a network: how much darker each pixel is than its blurred surroundings."""
from __future__ import annotations

import cv2
import numpy as np

from .common import fit_to_resolution, gray_to_rgb, map_frames, to_batch_uint8


def lineart_standard(
    images: np.ndarray,
    *,
    resolution: int = 512,
    gaussian_sigma: float = 6.0,
    intensity_threshold: int = 8,
) -> np.ndarray:
    """White lines on black, ``B×H×W×3`` uint8 at the input size.

    Line strength is ``min over channels of (blur(x, σ) − x)``: positive on the dark side of edges
    and thin dark strokes. It is normalised by the median strength of the pixels above
    ``intensity_threshold`` so contrast is similar across photos.
    """
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(batch, resolution)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        image = frame.astype(np.float32)
        blurred = cv2.GaussianBlur(image, (0, 0), float(gaussian_sigma)) if gaussian_sigma > 0 else image
        strength = (blurred - image).min(axis=2).clip(0, 255)
        strong = strength[strength > intensity_threshold]
        scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
        return np.clip(strength / scale * 127.0, 0, 255).astype(np.uint8)

    return gray_to_rgb(fit.restore(map_frames(one_frame, padded)[..., None]))
