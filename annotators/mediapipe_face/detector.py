"""MediaPipe face meshes over image batches, drawn at the detection resolution and aligned to the input.

Each frame is scaled so its short side is ``resolution`` (no padding: MediaPipe takes any size),
its faces are found by MediaPipe Face Mesh (one graph for the whole batch), drawn on a black
canvas of the detection size, and the map is resized back to the input's H×W with the mapping
every annotator uses.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..common import fit_to_resolution, to_batch_uint8
from .landmarks import PUPILS, FaceMeshLandmarker
from .render import MIN_FACE_SIZE, render_faces


class MediapipeFaceDetector:
    """``MediapipeFaceDetector()(images, max_faces=1, min_confidence=0.5)`` → B×H×W×3 uint8 maps.

    ``landmarker_factory(max_faces, min_confidence)`` builds the landmark source (MediaPipe's by
    default; tests pass their own). Graphs are kept per setting, so video frames reuse one.
    """

    def __init__(self, landmarker_factory: Any = FaceMeshLandmarker) -> None:
        self._factory = landmarker_factory
        self._landmarkers: dict[tuple[int, float], Any] = {}

    def landmarker(self, max_faces: int, min_confidence: float) -> Any:
        key = (int(max_faces), float(min_confidence))
        if key not in self._landmarkers:
            self._landmarkers[key] = self._factory(*key)
        return self._landmarkers[key]

    def __call__(
        self, images: Any, *, resolution: int = 512, max_faces: int = 1, min_confidence: float = 0.5,
        min_face_size: float = MIN_FACE_SIZE,
    ) -> np.ndarray:
        batch = to_batch_uint8(images)
        scaled, fit = fit_to_resolution(batch, resolution, multiple=1)
        landmarker = self.landmarker(max_faces, min_confidence)
        height, width = scaled.shape[1:3]
        maps = np.stack(
            [render_faces(landmarker(frame), height, width, landmarker.groups, PUPILS, min_face_size) for frame in scaled]
        )
        return fit.restore(maps)
