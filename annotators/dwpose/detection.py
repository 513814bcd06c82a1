"""YOLOX person boxes: letterbox input, anchor-grid decoding and non-maximum suppression.

As DWPose's ONNX annotator (and comfyui_controlnet_aux) runs ``yolox_l.onnx``: the image is scaled
by ``r = min(640 / h, 640 / w)`` (bilinear), placed at the top-left of a 640×640 canvas filled
with 114 and fed as float 0..255 in its own channel order (RGB here, as there). Boxes are decoded
on the stride 8/16/32 grids, scored ``objectness × class score``, suppressed per class at IoU
0.45 among scores above 0.1, and persons (class 0) scoring above 0.3 are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .checkpoint import DETECTOR_STRIDES

LETTERBOX_FILL = 114
PERSON_CLASS = 0


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds of the reference."""

    candidate_threshold: float = 0.1  # scores entering the suppression
    iou_threshold: float = 0.45
    person_threshold: float = 0.3  # kept boxes


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``H×W×3`` uint8 → (``3×size`` float32 network input, scale ``r``); the image at the top-left."""
    height, width = image.shape[:2]
    ratio = min(size[0] / height, size[1] / width)
    new_h, new_w = int(height * ratio), int(width * ratio)
    canvas = np.full((size[0], size[1], 3), LETTERBOX_FILL, np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


@lru_cache(maxsize=8)
def anchor_grid(size: tuple[int, int], strides: tuple[int, ...] = DETECTOR_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (x, y) and stride of every anchor, in the network's output order (level, row, column).

    Cached per input size: treat the arrays as read-only.
    """
    cells, steps = [], []
    for stride in strides:
        rows, columns = size[0] // stride, size[1] // stride
        ys, xs = np.mgrid[0:rows, 0:columns]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full(rows * columns, stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(steps).astype(np.float64)


def decode_boxes(raw: np.ndarray, cells: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """Raw ``(dx, dy, log w, log h, ...)`` rows of the given anchors → boxes (x1, y1, x2, y2) in input pixels."""
    raw = raw.astype(np.float64)
    centres = (raw[:, :2] + cells) * strides[:, None]
    sides = np.exp(raw[:, 2:4]) * strides[:, None]
    return np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)


def suppress(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression, best first; indices kept. Areas count ``+1`` pixel per side,
    the legacy convention the reference uses."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        overlap_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = overlap_w * overlap_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return kept


def person_boxes(raw: np.ndarray, size: tuple[int, int], ratio: float, config: DetectionConfig = DetectionConfig()) -> np.ndarray:
    """Person boxes (``N×4``, x1, y1, x2, y2 in the pixels of the image before letterboxing), best first.

    Suppression is per class, so only person boxes can suppress person boxes: the other classes'
    scores never need decoding, nor do boxes whose person score misses the candidate bar.
    """
    scores = raw[:, 4].astype(np.float64) * raw[:, 5 + PERSON_CLASS]
    candidates = np.flatnonzero(scores > config.candidate_threshold)
    cells, strides = anchor_grid(tuple(size))
    boxes = decode_boxes(raw[candidates], cells[candidates], strides[candidates]) / ratio
    kept = np.array(suppress(boxes, scores[candidates], config.iou_threshold), dtype=np.int64)
    kept = kept[scores[candidates][kept] > config.person_threshold]
    return boxes[kept]
