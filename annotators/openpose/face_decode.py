"""Face box from a body skeleton, and face keypoints from the face network's heatmaps.

The box rule is Lvmin Zhang's from ControlNet's OpenPose annotator (as controlnet_aux and
comfyui_controlnet_aux run it): a square around the nose, sized from the nose's distance to the
eyes (× 3) and ears (× 1.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .face_model import FACE_KEYPOINT_COUNT

NOSE = 0
# COCO-18 indices of the eyes and ears, with the factor their distance to the nose is scaled by.
FACE_REACH = ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5))


@dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    size: int  # nominal side; the crop is cut to the image where the box overhangs it


@dataclass(frozen=True)
class FaceDecodeConfig:
    """Constants of the reference annotator."""

    min_box_size: int = 20
    input_size: int = 384  # the crop is resized to this square for the network
    peak_threshold: float = 0.05


def face_box(
    body: list[tuple[float, float] | None], image_height: int, image_width: int, config: FaceDecodeConfig = FaceDecodeConfig()
) -> FaceBox | None:
    """The face crop for one skeleton (detection-image pixels), or None without a nose and an eye or ear.

    Half-side = the largest of 3 × (nose-eye) and 1.5 × (nose-ear) distances (Chebyshev), the box
    centred on the nose and clamped at the top/left border. As in the reference, the side is cut
    only where ``corner + half-side`` (the nose, unless clamped) passes the right/bottom border, so
    a box there keeps its side and overhangs the image; the crop is then cut to the image
    (non-square), as numpy slicing cuts it in the reference.
    """
    nose = body[NOSE]
    reach = [(body[index], factor) for index, factor in FACE_REACH if body[index] is not None]
    if nose is None or not reach:
        return None
    half = max(max(abs(nose[0] - point[0]), abs(nose[1] - point[1])) * factor for point, factor in reach)
    x = max(nose[0] - half, 0.0)
    y = max(nose[1] - half, 0.0)
    side_x = image_width - x if x + half > image_width else 2 * half
    side_y = image_height - y if y + half > image_height else 2 * half
    side = min(side_x, side_y)
    if side < config.min_box_size:
        return None
    return FaceBox(int(x), int(y), int(side))


def face_peaks(heatmaps: np.ndarray, config: FaceDecodeConfig = FaceDecodeConfig()) -> list[tuple[int, int] | None]:
    """70 keypoints (crop pixel x, y) from ``H×W×≥70`` heatmaps at the crop's size; ``None`` if absent.

    Per keypoint, the maximum of its heatmap, if it exceeds the threshold. The background map
    (channel 70) is not a keypoint and is ignored.
    """
    height, width = heatmaps.shape[:2]
    flat = heatmaps[:, :, :FACE_KEYPOINT_COUNT].reshape(height * width, FACE_KEYPOINT_COUNT)
    best = flat.argmax(axis=0)
    peaks = flat[best, np.arange(FACE_KEYPOINT_COUNT)]
    return [
        (int(index % width), int(index // width)) if peak > config.peak_threshold else None
        for index, peak in zip(best, peaks)
    ]
