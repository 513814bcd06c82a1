"""Post-processing shared by the soft-edge and line annotators (HED, PiDiNet, TEED, line art, M-LSD).

These follow the conventions the ControlNet 1.1 models were trained on (the original annotators
and controlnet_aux): a probability map becomes 8-bit by *truncation* (``astype(uint8)`` of
``value * 255``), "safe" maps are quantised to a few levels, and scribble maps are thinned,
blurred and thresholded into thick binary strokes.
"""
from __future__ import annotations

import cv2
import numpy as np

from .batch import map_frames
from .image import FitToResolution

# The four 3-tap directions (horizontal, vertical, both diagonals) along which a thin edge
# must be a local maximum to survive thinning.
_DIRECTIONS = tuple(
    np.array(kernel, np.uint8)
    for kernel in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
)


def safe_step(edges: np.ndarray, steps: int = 2) -> np.ndarray:
    """Quantise [0, 1] edges to ``steps`` + 1 levels (ControlNet's "safe" maps: faint, noisy
    edges that would leak hidden detail become 0). Computed in float32, as the originals do."""
    quantised = np.floor(edges.astype(np.float32) * (steps + 1)) / steps
    return np.clip(quantised, 0.0, 1.0)


def to_uint8_truncated(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] → uint8 by ``value * 255`` truncated (not rounded), in ``values``' own
    float precision: the 8-bit maps the ControlNet 1.1 models were trained on."""
    values = np.asarray(values)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32)
    return np.clip(values * 255.0, 0, 255).astype(np.uint8)


def thin_edges(gray: np.ndarray, threshold: int = 127, sigma: float = 3.0) -> np.ndarray:
    """Non-maximum suppression of one ``H×W`` uint8 edge map: blur by ``sigma``, keep pixels that
    are a local maximum along at least one of four directions and brighter than ``threshold``.
    Returns a 0/255 uint8 map of one-pixel-wide ridges."""
    blurred = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), sigma)
    ridge = np.zeros(blurred.shape, bool)
    for kernel in _DIRECTIONS:
        ridge |= cv2.dilate(blurred, kernel) == blurred
    return np.where(ridge & (blurred > threshold), 255, 0).astype(np.uint8)


def scribble_from_edges(gray: np.ndarray) -> np.ndarray:
    """Fake scribble from one ``H×W`` uint8 soft-edge map (ControlNet 1.1 ``scribble_hed`` /
    ``scribble_pidinet``): thinned ridges, blurred (σ = 3) and every touched pixel set white."""
    strokes = cv2.GaussianBlur(thin_edges(gray), (0, 0), 3.0)
    return np.where(strokes > 4, 255, 0).astype(np.uint8)


def scribble_batch(maps: np.ndarray) -> np.ndarray:
    """:func:`scribble_from_edges` over ``B×H×W`` uint8 maps (OpenCV parallelises each frame)."""
    return map_frames(scribble_from_edges, maps, threads=False)


def restore_binary(fit: FitToResolution, maps: np.ndarray) -> np.ndarray:
    """Map ``B×H'×W'`` 0/255 detection-size maps back to the input size and keep them two-level.

    Resampling a binary map to another size gives grey borders; they are re-thresholded at the
    middle (≥ 128 → 255) so scribble maps stay binary, as the scribble ControlNets expect.
    """
    restored = fit.restore(maps[..., None])[..., 0]
    return np.where(restored >= 128, 255, 0).astype(np.uint8)
