"""Draw POSE_KEYPOINT frames with the standard OpenPose colours (as ControlNet's OpenPose maps).

Body: 17 limbs as filled ellipses 4 px wide in 60 % of their colour, then the 18 joints as
radius-4 discs in full colour. Hands: 20 bones as 2 px lines coloured by hue around the HSV
circle, joints as radius-4 blue discs. Face: radius-3 white discs. Black background.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .keypoints import frame_is_normalised, to_pixel_points, validate_frame

# COCO-18 order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip,
# r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear. Pairs are 0-based.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

# RGB; limb i uses BODY_COLORS[i] (darkened), joint j uses BODY_COLORS[j].
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

LIMB_BRIGHTNESS = 0.6
BODY_STICK_HALF_WIDTH = 4
BODY_JOINT_RADIUS = 4

HAND_BONES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
HAND_BONE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
FACE_POINT_RADIUS = 3
FACE_POINT_COLOR = (255, 255, 255)


def limb_color(limb_index: int) -> tuple[int, int, int]:
    return tuple(int(channel * LIMB_BRIGHTNESS) for channel in BODY_COLORS[limb_index])  # type: ignore[return-value]


def hand_bone_color(bone_index: int) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(bone_index / len(HAND_BONES), 1.0, 1.0)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def _snap(value: float) -> float:
    """Undo float noise of normalised × size (0.29 * 100 = 28.999…): snap to an integer within 1e-6."""
    nearest = round(value)
    return float(nearest) if abs(value - nearest) <= 1e-6 * max(1.0, abs(value)) else value


def _pixel(value: float) -> int:
    # Truncation as in comfyui_controlnet_aux's renderer (pixel i covers [i, i + 1)), so the same
    # JSON draws the same pixels in both; snapping first keeps 0.29 * 100 on pixel 29, not 28.
    return int(math.floor(_snap(value)))


def _draw_body(canvas: np.ndarray, points: list[tuple[float, float] | None]) -> None:
    for limb_index, (start, end) in enumerate(BODY_LIMBS):
        first, second = points[start], points[end]
        if first is None or second is None:
            continue
        (x0, y0), (x1, y1) = (_snap(first[0]), _snap(first[1])), (_snap(second[0]), _snap(second[1]))
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (_pixel((x0 + x1) / 2), _pixel((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), BODY_STICK_HALF_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, limb_color(limb_index))
    for joint_index, point in enumerate(points):
        if point is not None:
            cv2.circle(canvas, (_pixel(point[0]), _pixel(point[1])), BODY_JOINT_RADIUS, BODY_COLORS[joint_index], -1)


def _draw_hand(canvas: np.ndarray, points: list[tuple[float, float] | None]) -> None:
    for bone_index, (start, end) in enumerate(HAND_BONES):
        first, second = points[start], points[end]
        if first is None or second is None:
            continue
        cv2.line(
            canvas,
            (_pixel(first[0]), _pixel(first[1])),
            (_pixel(second[0]), _pixel(second[1])),
            hand_bone_color(bone_index),
            thickness=HAND_BONE_THICKNESS,
        )
    for point in points:
        if point is not None:
            cv2.circle(canvas, (_pixel(point[0]), _pixel(point[1])), HAND_JOINT_RADIUS, HAND_JOINT_COLOR, -1)


def _draw_face(canvas: np.ndarray, points: list[tuple[float, float] | None]) -> None:
    for point in points:
        if point is not None:
            cv2.circle(canvas, (_pixel(point[0]), _pixel(point[1])), FACE_POINT_RADIUS, FACE_POINT_COLOR, -1)


def render_pose(frame: dict, *, draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True) -> np.ndarray:
    """Render one POSE_KEYPOINT frame to an ``H×W×3`` uint8 RGB map of size canvas_height × canvas_width.

    Coordinates may be normalised ([0, 1]) or pixels; see :func:`frame_is_normalised` for the rule.
    Raises ``AnnotatorInputError`` for a malformed frame.
    """
    frame = validate_frame(frame)
    height, width = frame["canvas_height"], frame["canvas_width"]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    normalised = frame_is_normalised(frame)
    for person in frame["people"]:
        if draw_body and person["pose_keypoints_2d"]:
            _draw_body(canvas, to_pixel_points(person["pose_keypoints_2d"], frame, normalised))
        if draw_hands:
            for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
                if person[key]:
                    _draw_hand(canvas, to_pixel_points(person[key], frame, normalised))
        if draw_face and person["face_keypoints_2d"]:
            _draw_face(canvas, to_pixel_points(person["face_keypoints_2d"], frame, normalised))
    return canvas
