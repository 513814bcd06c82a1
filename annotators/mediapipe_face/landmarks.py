"""MediaPipe Face Mesh landmarks (478 per face with the irises), through the optional ``mediapipe`` package.

Only the legacy ``mediapipe.solutions.face_mesh`` API is used, as controlnet_aux does: it ships its
face detector and landmark models inside the wheel, so nothing is downloaded and no weight file is
needed. That API (and the bundled models) exists up to mediapipe 0.10.21; later wheels dropped it,
and from 0.10.32 on they also depend on opencv-contrib-python, which would replace the pack's
``cv2``. See annotators/README.md for the install that keeps ``import cv2`` intact.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..common import MissingDependencyError

ANNOTATOR = "MediaPipe face"
INSTALL = (
    'pip install --no-deps "mediapipe==0.10.21" && pip install absl-py attrs flatbuffers matplotlib '
    '"protobuf>=4.25.3,<5"'
)
# Face-mesh edge groups drawn by the annotator, in drawing order, with their RGB colours (the
# colours controlnet_aux draws in BGR and flips at the end, written here as they come out).
CONNECTION_GROUPS = (
    ("FACEMESH_FACE_OVAL", (10, 200, 10)),
    ("FACEMESH_LEFT_EYE", (10, 200, 180)),
    ("FACEMESH_LEFT_EYEBROW", (10, 220, 180)),
    ("FACEMESH_RIGHT_EYE", (180, 200, 10)),
    ("FACEMESH_RIGHT_EYEBROW", (180, 220, 10)),
    ("FACEMESH_LIPS", (10, 180, 10)),
)
# Iris centres (refined landmarks 468 and 473) drawn as 4×4 squares, RGB.
PUPILS = ((468, (250, 200, 10)), (473, (10, 200, 250)))


def import_face_mesh() -> Any:
    """``mediapipe.solutions.face_mesh``, or :class:`MissingDependencyError` saying what to install."""
    try:
        import mediapipe
    except ImportError as error:
        raise MissingDependencyError("mediapipe", annotator=ANNOTATOR, install=INSTALL) from error
    solutions = getattr(mediapipe, "solutions", None)
    if solutions is None or not hasattr(solutions, "face_mesh"):
        version = getattr(mediapipe, "__version__", "?")
        raise MissingDependencyError(
            "mediapipe", annotator=f"{ANNOTATOR} (mediapipe {version} has no bundled face mesh: "
            "mediapipe.solutions was removed in 0.10.30; version 0.10.21 is needed)", install=INSTALL,
        )
    return solutions.face_mesh


def connection_groups(face_mesh: Any) -> list[tuple[list[tuple[int, int]], tuple[int, int, int]]]:
    """The edge groups to draw, read from mediapipe's own face-mesh topology tables."""
    return [(sorted(getattr(face_mesh, name)), colour) for name, colour in CONNECTION_GROUPS]


class FaceMeshLandmarker:
    """Runs MediaPipe Face Mesh on still images; one graph reused for every frame (static image mode)."""

    def __init__(self, max_faces: int = 1, min_confidence: float = 0.5) -> None:
        self._face_mesh_module = import_face_mesh()
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self._graph = self._face_mesh_module.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )
        self._lock = threading.Lock()  # a MediaPipe graph runs one image at a time
        self.groups = connection_groups(self._face_mesh_module)

    def __call__(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """Faces found in an ``H×W×3`` uint8 RGB image: one ``478×2`` array of normalised (x, y) each."""
        with self._lock:
            found = self._graph.process(np.ascontiguousarray(image_rgb)).multi_face_landmarks
        if not found:
            return []
        return [np.array([(point.x, point.y) for point in face.landmark], np.float64) for face in found]

    def close(self) -> None:
        self._graph.close()
