"""Straight-line maps for architecture: OpenCV's LSD segment detector or probabilistic Hough."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .common import AnnotatorInputError, fit_to_resolution, gray_to_rgb, map_frames, rgb_to_gray, to_batch_uint8

LINE_METHODS = ("lsd", "hough")


def detect_line_segments(
    gray: np.ndarray,
    *,
    method: str = "lsd",
    min_length: float = 20.0,
    hough_threshold: int = 50,
    max_gap: float = 5.0,
) -> np.ndarray:
    """Segments ``N×4`` float32 ``(x1, y1, x2, y2)`` in pixel coordinates of one ``H×W`` uint8 image.

    ``lsd`` finds segments from the gradient field directly (no thresholds to tune); ``hough`` runs
    Canny then the probabilistic Hough transform (``hough_threshold`` votes, gaps up to ``max_gap``).
    Segments shorter than ``min_length`` pixels are dropped.
    """
    if method == "lsd":
        detector = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD)
        found = detector.detect(gray)[0]
    elif method == "hough":
        edges = cv2.Canny(gray, 50, 150)
        found = cv2.HoughLinesP(
            edges, rho=1, theta=math.pi / 180, threshold=int(hough_threshold),
            minLineLength=float(min_length), maxLineGap=float(max_gap),
        )
    else:
        raise AnnotatorInputError(f"method: expected one of {LINE_METHODS}, found {method!r}")
    if found is None:
        return np.zeros((0, 4), np.float32)
    segments = found.reshape(-1, 4).astype(np.float32)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    return segments[lengths >= min_length]


def draw_segments(segments: np.ndarray, height: int, width: int, thickness: int = 1) -> np.ndarray:
    """Draw segments white on a black ``H×W`` uint8 canvas."""
    canvas = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in np.rint(segments).astype(np.int32):
        cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 255, int(thickness), lineType=cv2.LINE_8)
    return canvas


def lines(
    images: np.ndarray,
    *,
    resolution: int = 512,
    method: str = "lsd",
    min_length: float = 20.0,
    thickness: int = 1,
    hough_threshold: int = 50,
    max_gap: float = 5.0,
) -> np.ndarray:
    """Straight line segments drawn white on black, ``B×H×W×3`` uint8 at the input size.

    ``min_length``, ``thickness`` and ``max_gap`` are in pixels at the detection resolution.
    """
    if method not in LINE_METHODS:
        raise AnnotatorInputError(f"method: expected one of {LINE_METHODS}, found {method!r}")
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(rgb_to_gray(batch)[..., None], resolution)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        gray = frame[..., 0]
        segments = detect_line_segments(
            gray, method=method, min_length=min_length, hough_threshold=hough_threshold, max_gap=max_gap
        )
        return draw_segments(segments, gray.shape[0], gray.shape[1], thickness)

    return gray_to_rgb(fit.restore_binary(map_frames(one_frame, padded)[..., None], lines=True))
