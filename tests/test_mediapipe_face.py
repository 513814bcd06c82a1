"""MediaPipe face: the drawing (hand-derived pixels), alignment and batching with a stand-in landmark
source, the message without mediapipe, and, where mediapipe is installed, the real face mesh on a
bundled photo against controlnet_aux's own annotator."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from annotators.common import MissingDependencyError
from annotators.mediapipe_face import MediapipeFaceDetector, draw_face_mesh, render_faces
from annotators.mediapipe_face.landmarks import CONNECTION_GROUPS, PUPILS, import_face_mesh

GREEN, CYAN = (10, 200, 10), (10, 200, 180)


def square_face(left: float, top: float, side: float, count: int = 478) -> np.ndarray:
    """``count`` landmarks spread over a square (normalised): 0-3 its corners, 468/473 two 'pupils'."""
    points = np.tile([left + side / 2, top + side / 2], (count, 1)).astype(np.float64)
    points[:4] = [(left, top), (left + side, top), (left + side, top + side), (left, top + side)]
    points[468] = (left + side * 0.25, top + side * 0.5)
    points[473] = (left + side * 0.75, top + side * 0.5)
    return points


def test_drawing_lines_pupils_and_the_pixel_rule():
    canvas = np.zeros((100, 200, 3), np.uint8)
    landmarks = square_face(0.1, 0.2, 0.5)  # corners at x 0.1, 0.6 (pixels 20, 120), y 0.2, 0.7 (20, 70)
    landmarks[4] = (1.5, 0.5)  # outside the image: its edge is not drawn
    groups = [([(0, 1)], GREEN), ([(1, 2), (2, 4)], CYAN)]
    draw_face_mesh(canvas, landmarks, groups, PUPILS)
    # Edge 0-1: the top side, row 20 from column 20 to 120 (2 px thick: the centre row is always set);
    # edge 1-2, the right side, column 120 from row 20 to 70, is drawn after it, over the corner.
    assert (canvas[20, 20:118] == GREEN).all()
    assert (canvas[20:71, 120] == CYAN).all()
    assert not canvas[75:, :].any() and not canvas[:, 125:].any()  # nothing towards the outside point
    # Pupils: 4×4 squares from (int(x × W) - 2, int(y × H) - 2): x 0.225 → 45, 0.475 → 95; y 0.45 → 45.
    assert (canvas[43:47, 43:47] == PUPILS[0][1]).all() and (canvas[43:47, 93:97] == PUPILS[1][1]).all()
    assert not canvas[47, 45].any() and not canvas[45, 47].any()
    # x = 1.0 is drawn on the last column, never outside.
    edge = np.zeros((10, 10, 3), np.uint8)
    draw_face_mesh(edge, np.array([(0.0, 0.0), (1.0, 0.0)]), [([(0, 1)], GREEN)], [])
    assert (edge[0, :] == GREEN).all()


def test_faces_under_64_pixels_are_not_drawn():
    groups = [([(0, 1), (1, 2), (2, 3), (3, 0)], GREEN)]
    small = square_face(0.1, 0.1, 60 / 256)  # 60 px on a 256 px canvas
    large = square_face(0.5, 0.5, 64 / 256)
    drawn = render_faces([small, large], 256, 256, groups, PUPILS)
    assert not drawn[:100, :100].any() and drawn[128:, 128:].any()


class StandInLandmarker:
    """Answers with fixed faces (normalised), one call per frame, recording the frames it sees."""

    instances: list["StandInLandmarker"] = []

    def __init__(self, max_faces: int, min_confidence: float) -> None:
        self.settings = (max_faces, min_confidence)
        self.groups = [([(0, 1), (1, 2), (2, 3), (3, 0)], GREEN)]
        self.frames: list[np.ndarray] = []
        StandInLandmarker.instances.append(self)

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        self.frames.append(image)
        shift = 0.1 * (len(self.frames) - 1)  # each frame's face a little further right
        return [square_face(0.2 + shift, 0.25, 0.5)]


def test_maps_are_drawn_at_the_detection_size_and_aligned_to_the_input():
    StandInLandmarker.instances.clear()
    detector = MediapipeFaceDetector(StandInLandmarker)
    batch = np.zeros((3, 300, 400, 3), np.uint8)  # detected at 256 × 341
    maps = detector(batch, resolution=256, max_faces=2, min_confidence=0.3)
    assert maps.shape == (3, 300, 400, 3) and maps.dtype == np.uint8
    (landmarker,) = StandInLandmarker.instances  # one graph for the whole batch
    assert landmarker.settings == (2, 0.3) and [frame.shape for frame in landmarker.frames] == [(256, 341, 3)] * 3
    for index, frame in enumerate(maps):
        left = 0.2 + 0.1 * index
        # The square's left side at x = left × W of the input, top side at y = 0.25 × H, both ±2 px
        # (drawn 2 px wide at the detection size, then resized).
        column = int(round(left * 400))
        assert frame[150, column - 2 : column + 3].any() and not frame[150, column + 6 : column + 20].any()
        assert frame[73:78, int(round((left + 0.25) * 400))].any()
    detector(batch[:1], resolution=256, max_faces=2, min_confidence=0.3)
    assert len(StandInLandmarker.instances) == 1  # the graph is kept for the next call


def test_without_mediapipe_the_message_names_it_and_the_safe_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(MissingDependencyError) as caught:
        import_face_mesh()
    message = str(caught.value)
    assert "'mediapipe'" in message and "--no-deps" in message and "mediapipe==0.10.21" in message


def test_a_mediapipe_without_the_bundled_face_mesh_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", types.SimpleNamespace(__version__="0.10.31"))
    with pytest.raises(MissingDependencyError, match=r"0\.10\.31 has no bundled face mesh"):
        import_face_mesh()


# --------------------------------------------------------------------------- with mediapipe itself


def astronaut() -> np.ndarray:
    from PIL import Image

    from annotators.__main__ import SAMPLES_DIR

    return np.asarray(Image.open(SAMPLES_DIR / "astronaut.png").convert("RGB"))


@pytest.fixture
def mediapipe():
    try:
        return import_face_mesh()
    except MissingDependencyError as error:
        pytest.skip(f"mediapipe with its bundled face mesh is not installed: {error}")


def test_real_face_mesh_finds_the_astronauts_face_by_name(mediapipe):
    from annotators import run_annotator

    photo = astronaut()  # 512 × 512; the face is in the upper left quarter
    result = run_annotator("mediapipe_face", np.stack([photo, photo[:, ::-1]]))
    assert result.images.shape == (2, 512, 512, 3) and result.pose_keypoints is None
    drawn = result.images.any(axis=-1)
    ys, xs = np.nonzero(drawn[0])
    assert 150 < xs.min() < xs.max() < 300 and 50 < ys.min() < ys.max() < 200
    mirrored_xs = np.nonzero(drawn[1])[1]  # the mirrored photo: the face drawn on the other side
    assert abs((511 - mirrored_xs.max()) - xs.min()) <= 6 and abs((511 - mirrored_xs.min()) - xs.max()) <= 6
    colours = {tuple(colour) for colour in result.images[0][drawn[0]]}
    assert {colour for _, colour in CONNECTION_GROUPS} <= colours  # every contour group is there


def test_real_face_mesh_map_matches_controlnet_aux(mediapipe, monkeypatch):
    from aux_reference import load

    reference = load(monkeypatch, "mediapipe_face.mediapipe_face_common")
    photo = astronaut()
    expected = reference.generate_annotation(photo, 1, 0.5)  # at the photo's own size, 512²
    found = MediapipeFaceDetector()(photo, resolution=512, max_faces=1, min_confidence=0.5)[0]
    assert expected.any() and np.array_equal(found, expected)


def test_the_optional_packages_are_imported_only_when_their_annotator_runs():
    import subprocess
    from pathlib import Path

    code = (
        "import sys, annotators, annotators.dwpose, annotators.mediapipe_face, annotators.registry\n"
        "print(sorted(name for name in ('onnxruntime', 'mediapipe') if name in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
