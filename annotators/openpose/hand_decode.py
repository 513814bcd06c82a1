"""Hand boxes from a body skeleton, and hand keypoints from the hand network's heatmaps."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

NUM_HAND_PARTS = 21

# (shoulder, elbow, wrist) body indices per side, COCO-18.
LEFT_ARM = (5, 6, 7)
RIGHT_ARM = (2, 3, 4)


@dataclass(frozen=True)
class HandBox:
    x: int
    y: int
    size: int  # square crop
    is_left: bool


@dataclass(frozen=True)
class HandDecodeConfig:
    """Constants of the reference (OpenPose handDetector.cpp via pytorch-openpose)."""

    wrist_elbow_ratio: float = 0.33
    min_box_size: int = 20
    heatmap_size: int = 128  # heatmaps of all scales are averaged at this square size
    peak_threshold: float = 0.05
    smoothing_sigma: float = 3.0


def hand_boxes(
    body: list[tuple[float, float] | None], image_height: int, image_width: int, config: HandDecodeConfig = HandDecodeConfig()
) -> list[HandBox]:
    """Square crops around each hand, extrapolated from wrist and elbow (left hand first)."""
    boxes = []
    for is_left, (shoulder_i, elbow_i, wrist_i) in ((True, LEFT_ARM), (False, RIGHT_ARM)):
        shoulder, elbow, wrist = body[shoulder_i], body[elbow_i], body[wrist_i]
        if shoulder is None or elbow is None or wrist is None:
            continue
        ratio = config.wrist_elbow_ratio
        centre_x = wrist[0] + ratio * (wrist[0] - elbow[0])
        centre_y = wrist[1] + ratio * (wrist[1] - elbow[1])
        wrist_elbow = math.dist(wrist, elbow)
        elbow_shoulder = math.dist(elbow, shoulder)
        size = 1.5 * max(wrist_elbow, 0.9 * elbow_shoulder)
        x = max(centre_x - size / 2, 0.0)
        y = max(centre_y - size / 2, 0.0)
        size = min(size, image_width - x, image_height - y)  # keep the square inside the image
        if size >= config.min_box_size:
            boxes.append(HandBox(int(x), int(y), int(size), is_left))
    return boxes


def hand_peaks(
    heatmaps: np.ndarray, crop_height: int, crop_width: int, config: HandDecodeConfig = HandDecodeConfig()
) -> list[tuple[int, int] | None]:
    """21 keypoints (crop pixel x, y) from ``heatmap_size``² × ≥21 averaged heatmaps; ``None`` if absent.

    Per part: smooth, keep the connected blob above the threshold with the most heat, take its
    maximum of the raw map.
    """
    size = heatmaps.shape[0]
    points: list[tuple[int, int] | None] = []
    for part in range(NUM_HAND_PARTS):
        raw = np.ascontiguousarray(heatmaps[:, :, part], dtype=np.float32)
        smooth = cv2.GaussianBlur(raw, (0, 0), config.smoothing_sigma, borderType=cv2.BORDER_REFLECT)
        mask = (smooth > config.peak_threshold).astype(np.uint8)
        if not mask.any():
            points.append(None)
            continue
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        heat_per_blob = np.bincount(labels.ravel(), weights=raw.ravel(), minlength=count)
        heat_per_blob[0] = -np.inf  # label 0 is the background
        best = labels == int(np.argmax(heat_per_blob))
        y, x = np.unravel_index(int(np.argmax(np.where(best, raw, -np.inf))), raw.shape)
        points.append((int(x * crop_width / size), int(y * crop_height / size)))
    return points
