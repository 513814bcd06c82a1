"""Drawing MediaPipe face meshes as the face ControlNet's maps (controlnet_aux's mediapipe_face style).

Per face, on a black canvas: each edge of the contour groups (face oval, eyes, eyebrows, lips) as a
2 px line in its group's colour, then the two iris centres as 4×4 squares. A landmark maps to the
pixel ``min(floor(x × W), W - 1)`` (MediaPipe's drawing convention); one outside [0, 1] is not
drawn, nor are its edges.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

LINE_THICKNESS = 2
PUPIL_HALF_SIDE = 2
MIN_FACE_SIZE = 64  # pixels at the detection resolution; smaller faces are not drawn

Colour = tuple[int, int, int]


def _to_pixel(x: float, y: float, width: int, height: int) -> tuple[int, int] | None:
    inside = all(-1e-9 <= value <= 1 + 1e-9 for value in (x, y))
    if not inside:
        return None
    return min(math.floor(x * width), width - 1), min(math.floor(y * height), height - 1)


def face_size(landmarks: np.ndarray, width: int, height: int) -> float:
    """The smaller side, in pixels, of the box around a face's landmarks."""
    span = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(min(span[0] * width, span[1] * height))


def draw_face_mesh(
    canvas: np.ndarray,
    landmarks: np.ndarray,
    groups: Sequence[tuple[Sequence[tuple[int, int]], Colour]],
    pupils: Sequence[tuple[int, Colour]],
) -> None:
    """Draw one face (``N×2`` normalised landmarks) onto an ``H×W×3`` RGB canvas in place."""
    height, width = canvas.shape[:2]
    pixels = [_to_pixel(float(x), float(y), width, height) for x, y in landmarks]
    for edges, colour in groups:
        for start, end in edges:
            if max(start, end) < len(pixels) and pixels[start] is not None and pixels[end] is not None:
                cv2.line(canvas, pixels[start], pixels[end], colour, thickness=LINE_THICKNESS)
    for index, colour in pupils:
        if index >= len(landmarks):
            continue
        x, y = landmarks[index]
        if not (0 <= x < 1 and 0 <= y < 1):
            continue
        column, row = int(width * x), int(height * y)
        canvas[max(row - PUPIL_HALF_SIDE, 0) : row + PUPIL_HALF_SIDE, max(column - PUPIL_HALF_SIDE, 0) : column + PUPIL_HALF_SIDE] = colour


def render_faces(
    faces: Sequence[np.ndarray],
    height: int,
    width: int,
    groups: Sequence[tuple[Sequence[tuple[int, int]], Colour]],
    pupils: Sequence[tuple[int, Colour]],
    min_face_size: float = MIN_FACE_SIZE,
) -> np.ndarray:
    """A black ``height×width×3`` uint8 map with every face at least ``min_face_size`` pixels across."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for landmarks in faces:
        if face_size(landmarks, width, height) >= min_face_size:
            draw_face_mesh(canvas, landmarks, groups, pupils)
    return canvas
