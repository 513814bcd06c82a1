"""COCO-WholeBody's 133 keypoints → OpenPose's body (COCO-18), hands and face, as DWPose converts them.

COCO-WholeBody: 0-16 body (COCO-17: nose, left/right eye, ear, shoulder, elbow, wrist, hip, knee,
ankle, left first), 17-22 feet, 23-90 face (68 landmarks), 91-111 left hand, 112-132 right hand.
OpenPose's COCO-18 adds a neck and orders the body nose, neck, then right before left. The neck
is the shoulders' midpoint, present when both shoulders score above 0.3. The face gets the two
eyes as OpenPose's pupils 68 and 69 (right, left). The feet are not part of the OpenPose format.
"""
from __future__ import annotations

import numpy as np

SCORE_THRESHOLD = 0.3
NECK_SCORE_THRESHOLD = 0.3
LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6  # COCO-17

# OpenPose COCO-18 index → COCO-17 index (None: the neck, computed).
OPENPOSE_BODY_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
RIGHT_EYE_18, LEFT_EYE_18 = 14, 15  # OpenPose body indices of the eyes (the face's pupils)

Point = tuple[float, float]


def _part(points: np.ndarray, scores: np.ndarray) -> list[Point | None]:
    return [
        (float(x), float(y)) if score >= SCORE_THRESHOLD else None for (x, y), score in zip(points, scores)
    ]


def to_openpose(points: np.ndarray, scores: np.ndarray) -> dict[str, list[Point | None] | None]:
    """One person's ``133×2`` keypoints and ``133`` scores → OpenPose parts (points ``None`` when
    scoring under 0.3; a hand or face with no point left is ``None``, a body never is)."""
    body_points = np.zeros((18, 2))
    body_scores = np.zeros(18)
    for openpose_index, coco_index in enumerate(OPENPOSE_BODY_FROM_COCO):
        if coco_index is None:
            body_points[openpose_index] = (points[LEFT_SHOULDER] + points[RIGHT_SHOULDER]) / 2
            both = scores[LEFT_SHOULDER] > NECK_SCORE_THRESHOLD and scores[RIGHT_SHOULDER] > NECK_SCORE_THRESHOLD
            body_scores[openpose_index] = 1.0 if both else 0.0
        else:
            body_points[openpose_index] = points[coco_index]
            body_scores[openpose_index] = scores[coco_index]
    body = _part(body_points, body_scores)

    def optional(part: list[Point | None]) -> list[Point | None] | None:
        return part if any(point is not None for point in part) else None

    face = optional(_part(points[FACE], scores[FACE]))
    if face is not None:
        face = face + [body[RIGHT_EYE_18], body[LEFT_EYE_18]]
    return {
        "body": body,
        "left_hand": optional(_part(points[LEFT_HAND], scores[LEFT_HAND])),
        "right_hand": optional(_part(points[RIGHT_HAND], scores[RIGHT_HAND])),
        "face": face,
    }
