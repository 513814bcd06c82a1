"""DWPose: ONNX loading and checks, YOLOX letterbox/decoding/NMS, the affine crop and SimCC decoding,
the COCO-WholeBody → OpenPose conversion, and end-to-end alignment, with the tiny ONNX stand-ins of
tests/onnx_models.py in the published input/output names and shapes. onnx and onnxruntime are test
dependencies (requirements-test.txt): without them this module fails, it does not skip."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from annotators.common import AnnotatorInputError, MissingDependencyError, MissingWeightsError
from annotators.dwpose import DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE, DWPoseDetector, load_person_detector, load_pose_model
from annotators.dwpose.detection import DetectionConfig, letterbox, person_boxes
from annotators.dwpose.keypoints import to_openpose
from annotators.dwpose.pose import box_centre_and_scale, crop_person, decode_simcc, to_image
from onnx_models import ANCHORS, constant_detector, dot_pose_model, raw_anchor


# --------------------------------------------------------------------------- detection


def test_letterbox_scales_to_fit_and_pads_with_114_at_the_bottom_right():
    image = np.zeros((100, 50, 3), np.uint8)
    image[:, :, 0] = 200
    image[99, 49] = (10, 20, 30)
    tensor, ratio = letterbox(image, (640, 640))
    assert ratio == 6.4 and tensor.shape == (3, 640, 640) and tensor.dtype == np.float32
    # 100 × 6.4 = 640 rows, 50 × 6.4 = 320 columns of image; the rest is the fill value, in 0..255.
    assert (tensor[0, :600, :320] == 200).all() and (tensor[:, :, 320:] == 114).all()
    assert tuple(tensor[:, 639, 319]) == (10, 20, 30)  # the bottom-right pixel lands at the content's corner


def test_person_boxes_decode_the_anchor_grids_and_suppress_per_class():
    raw = np.zeros((ANCHORS, 85))
    raw_anchor(raw, 8, 10, 20, (0.5, 0.5, math.log(20), math.log(40)), 0.9, {0: 0.8})  # A: 0.72
    raw_anchor(raw, 8, 11, 20, (0.5, 0.5, math.log(20), math.log(40)), 0.9, {0: 0.7})  # B: 0.63, over A
    raw_anchor(raw, 16, 30, 10, (0.0, 0.0, math.log(4), math.log(8)), 1.0, {0: 0.5})  # C: 0.5, apart
    raw_anchor(raw, 16, 5, 35, (0.0, 0.0, 0.0, 0.0), 0.5, {0: 0.5})  # D: 0.25, under the 0.3 bar
    raw_anchor(raw, 32, 2, 5, (0.5, 0.5, math.log(5), math.log(10)), 0.95, {0: 0.05, 2: 0.99})  # a car on A's spot
    boxes = person_boxes(raw, (640, 640), ratio=1.6)
    # A: centre ((0.5 + 10) × 8, (0.5 + 20) × 8) = (84, 164), size (20 × 8, 40 × 8) = (160, 320).
    # B overlaps A with IoU (153 × 321) / (2 × 161 × 321 - 153 × 321) = 0.905 > 0.45: suppressed.
    # C: centre (30 × 16, 10 × 16) = (480, 160), size (64, 128). All divided by the letterbox ratio.
    expected = np.array([[4, 4, 164, 324], [448, 96, 512, 224]]) / 1.6
    np.testing.assert_allclose(boxes, expected, rtol=0, atol=1e-9)
    # With a looser overlap bar B survives, after A and before C.
    loose = person_boxes(raw, (640, 640), ratio=1.6, config=DetectionConfig(iou_threshold=0.95))
    np.testing.assert_allclose(loose[1], np.array([12, 4, 172, 324]) / 1.6, atol=1e-9)
    assert len(loose) == 3


# --------------------------------------------------------------------------- pose crop and SimCC


def test_box_is_padded_and_grown_to_the_networks_aspect_ratio():
    centre, scale = box_centre_and_scale(np.array([10.0, 20.0, 110.0, 220.0]), (384, 288))
    # 100 × 200 box, padded 1.25 → 125 × 250; 125 < 250 × 0.75, so the width grows to 187.5.
    assert tuple(centre) == (60.0, 120.0) and tuple(scale) == (187.5, 250.0)
    centre, scale = box_centre_and_scale(np.array([0.0, 0.0, 300.0, 100.0]), (384, 288))
    assert tuple(scale) == (375.0, 500.0)  # a wide box: the height grows to 375 / 0.75


def test_affine_crop_and_its_inverse_put_a_pixel_back_where_it_was():
    image = np.zeros((200, 300, 3), np.uint8)
    image[130, 70] = (255, 255, 255)
    box = np.array([40.0, 60.0, 120.0, 180.0])  # centre (80, 120); padded 100 × 150 → crop scale (112.5, 150)
    tensor, centre, scale = crop_person(image, box, (384, 288))
    assert tensor.shape == (3, 384, 288)
    # Crop pixel = (p - centre) × 288 / 112.5 + (144, 192): (70, 130) → (118.4, 217.6); bilinear puts
    # the brightest crop pixel at the nearest integer position (118, 218).
    brightest = np.unravel_index(int(np.argmax(tensor[0])), tensor[0].shape)
    assert brightest == (218, 118)
    back = to_image(np.array([[118.0, 218.0]]), centre, scale, (384, 288))[0]
    np.testing.assert_allclose(back, (70 - 0.4 * 112.5 / 288, 130 + 0.4 * 112.5 / 288), atol=1e-9)
    # Black outside the image, then normalised: (0 - 123.675) / 58.395 in the red channel.
    assert tensor[0, 0, 0] == pytest.approx(-123.675 / 58.395, abs=1e-6)


def test_simcc_decoding_takes_the_arg_maxima_at_half_pixel_bins_and_the_smaller_maximum():
    simcc_x = np.zeros((1, 3, 576), np.float32)
    simcc_y = np.zeros((1, 3, 768), np.float32)
    simcc_x[0, 0, 101], simcc_y[0, 0, 300] = 0.9, 0.6  # bin 101 → x 50.5; bin 300 → y 150
    simcc_x[0, 1, 7], simcc_y[0, 1, 8] = 0.2, 0.8
    simcc_x[0, 2] -= 1.0  # nothing positive: location -1 bin → -0.5
    points, scores = decode_simcc(simcc_x, simcc_y)
    assert points[0, 0].tolist() == [50.5, 150.0] and scores[0, 0] == pytest.approx(0.6)
    assert points[0, 1].tolist() == [3.5, 4.0] and scores[0, 1] == pytest.approx(0.2)
    assert points[0, 2].tolist() == [-0.5, -0.5] and scores[0, 2] <= 0


# --------------------------------------------------------------------------- keypoint conversion


def test_wholebody_keypoints_become_openpose_body_hands_and_face_in_dwposes_order():
    # Keypoint i of COCO-WholeBody sits at (i, 1000 + i), so every output point names its source.
    points = np.stack([np.arange(133.0), 1000.0 + np.arange(133.0)], axis=1)
    scores = np.full(133, 0.9)
    scores[12] = 0.1  # COCO right hip: under the bar
    scores[91:112] = 0.2  # the whole left hand: under the bar
    parts = to_openpose(points, scores)
    # OpenPose COCO-18 ← COCO-17: nose, (neck), R shoulder 6, R elbow 8, R wrist 10, L shoulder 5,
    # L elbow 7, L wrist 9, R hip 12, R knee 14, R ankle 16, L hip 11, L knee 13, L ankle 15,
    # R eye 2, L eye 1, R ear 4, L ear 3.
    source = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    body = parts["body"]
    for index, coco in enumerate(source):
        if coco is None:
            assert body[index] == (5.5, 1005.5)  # the neck: the shoulders' midpoint
        elif coco == 12:
            assert body[index] is None
        else:
            assert body[index] == (coco, 1000 + coco), index
    assert parts["left_hand"] is None
    assert parts["right_hand"] == [(float(i), 1000.0 + i) for i in range(112, 133)]
    # 68 face landmarks (COCO 23..90), then the right and left eyes as OpenPose's pupils 68 and 69.
    assert parts["face"][:68] == [(float(i), 1000.0 + i) for i in range(23, 91)]
    assert parts["face"][68:] == [(2.0, 1002.0), (1.0, 1001.0)]


def test_the_neck_needs_both_shoulders_above_the_bar():
    points = np.zeros((133, 2))
    scores = np.full(133, 0.9)
    scores[5] = 0.3  # not above 0.3 (the neck's test is strict, a point's own test is ≥ 0.3)
    parts = to_openpose(points, scores)
    assert parts["body"][1] is None and parts["body"][5] is not None


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder with the two files under their published names: a constant one-person 'YOLOX' and the
    red-dot 'RTMPose' (dynamic batch), plus fixed-batch variants."""
    folder = tmp_path_factory.mktemp("dwpose")
    raw = np.zeros((ANCHORS, 85), np.float32)
    # One person box for a 256×320 image (letterbox ratio 2): x 40..200, y 20..236 in the image,
    # i.e. centre (240, 256) and size (320, 432) in the letterbox: stride 32, cell (7, 8).
    raw_anchor(raw, 32, 7, 8, (0.5, 0.0, math.log(10), math.log(13.5)), 0.9, {0: 0.9})
    constant_detector(folder / DETECTOR_WEIGHT_FILE, raw)
    dot_pose_model(folder / POSE_WEIGHT_FILE)
    constant_detector(folder / "dynamic_yolox.onnx", raw, batch="batch")
    dot_pose_model(folder / "fixed_pose.onnx", batch=1, names=("out_a", "out_b"))
    return folder


def test_loaders_read_the_published_signatures(models):
    detector = load_person_detector(models / DETECTOR_WEIGHT_FILE)
    assert detector.input_size == (640, 640) and not detector.batched and detector.input_name == "images"
    assert load_person_detector(models / "dynamic_yolox.onnx").batched
    pose = load_pose_model(models / POSE_WEIGHT_FILE)
    assert pose.input_size == (384, 288) and pose.batched and pose.output_names == ("simcc_x", "simcc_y")
    fixed = load_pose_model(models / "fixed_pose.onnx")  # outputs taken by position, as the reference does
    assert not fixed.batched and fixed.output_names == ("out_a", "out_b")
    crops = np.random.default_rng(0).random((3, 3, 384, 288)).astype(np.float32)
    one_call = pose.run(crops)
    one_by_one = fixed.run(crops)
    assert one_call[0].shape == (3, 133, 576) and one_call[1].shape == (3, 133, 768)
    assert all(np.array_equal(a, b) for a, b in zip(one_call, one_by_one))


def test_swapped_garbled_and_missing_files_get_clear_errors(models, tmp_path):
    with pytest.raises(AnnotatorInputError) as caught:
        load_person_detector(models / POSE_WEIGHT_FILE)
    message = str(caught.value)
    assert POSE_WEIGHT_FILE in message and "YOLOX person detector" in message and "[B, 8400, 85]" in message
    assert "looks like the DWPose whole-body pose model" in message
    with pytest.raises(AnnotatorInputError, match="looks like the YOLOX person detector"):
        load_pose_model(models / DETECTOR_WEIGHT_FILE)
    garbled = tmp_path / POSE_WEIGHT_FILE
    garbled.write_bytes((models / POSE_WEIGHT_FILE).read_bytes()[:40])
    with pytest.raises(AnnotatorInputError, match="cannot read weight file .* as an ONNX model"):
        load_pose_model(garbled)
    (tmp_path / DETECTOR_WEIGHT_FILE).write_bytes((models / DETECTOR_WEIGHT_FILE).read_bytes())
    garbled.unlink()
    with pytest.raises(MissingWeightsError) as missing:
        DWPoseDetector.from_folder(tmp_path)
    assert POSE_WEIGHT_FILE in str(missing.value) and str(tmp_path) in str(missing.value)


def test_without_onnxruntime_the_message_names_the_package(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError) as caught:
        load_pose_model(models / POSE_WEIGHT_FILE)
    assert "onnxruntime" in str(caught.value) and "pip install onnxruntime" in str(caught.value)


# --------------------------------------------------------------------------- end to end


def blobs(dots: list[tuple[int, int]], height: int = 256, width: int = 320) -> np.ndarray:
    """One frame per dot: a white Gaussian blob (sigma 1.5 px) peaking at the dot's pixel. Resampled
    bilinearly, its brightest sample stays the one nearest the dot, so the dot model finds it."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = [255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2)) for x, y in dots]
    return np.repeat(np.rint(np.stack(frames))[..., None], 3, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("resolution", [256, 384])
def test_keypoints_land_on_the_input_pixels_batched(models, resolution):
    # Two 256×320 frames, each with one bright blob inside the one person box the 'YOLOX' reports.
    dots = [(101, 150), (63, 57)]  # (x, y)
    batch = blobs(dots)
    detector = DWPoseDetector.from_folder(models)
    if resolution == 256:  # the file's own size: the box is the one drawn above
        (boxes,) = detector.person_boxes(batch[:1])
        np.testing.assert_allclose(boxes, [[40, 20, 200, 236]], atol=1e-3)  # float32 output
    frames = detector.detect_batch(batch, resolution=resolution)
    for frame, (x, y) in zip(frames, dots):
        assert (frame["canvas_height"], frame["canvas_width"]) == (256, 320)
        (person,) = frame["people"]
        for key, count in (("pose_keypoints_2d", 18), ("hand_left_keypoints_2d", 21),
                           ("hand_right_keypoints_2d", 21), ("face_keypoints_2d", 70)):
            keypoints = np.array(person[key]).reshape(count, 3)
            assert (keypoints[:, 2] == 1.0).all(), key
            # Every keypoint of the dot model is the dot, written at its pixel as OpenPose's are.
            assert np.abs(keypoints[:, 0] * 320 - x).max() <= 1 and np.abs(keypoints[:, 1] * 256 - y).max() <= 1, key
    if resolution == 256:  # no resampling of the frame: exactly the dot's pixel
        keypoints = np.array(frames[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
        assert np.array_equal(keypoints[:, :2] * [320, 256], np.tile(dots[0], (18, 1)))


def test_a_frame_without_a_person_box_has_no_people(models, tmp_path):
    constant_detector(tmp_path / DETECTOR_WEIGHT_FILE, np.zeros((ANCHORS, 85), np.float32))
    dot_pose_model(tmp_path / POSE_WEIGHT_FILE)
    maps, frames = DWPoseDetector.from_folder(tmp_path)(np.full((1, 40, 60, 3), 255, np.uint8), resolution=64)
    assert frames[0]["people"] == [] and maps.shape == (1, 40, 60, 3) and not maps.any()


def test_dwpose_by_name_renders_like_openpose(models):
    from annotators import run_annotator
    from annotators.openpose import render_pose

    batch = blobs([(80, 100)] * 3)
    result = run_annotator("dwpose", batch, resolution=256, models_dir=str(models), draw_face=False)
    assert result.images.shape == (3, 256, 320, 3) and len(result.pose_keypoints) == 3
    assert np.array_equal(result.images[1], render_pose(result.pose_keypoints[1], draw_face=False))
    assert result.images[0, 100, 80].any()


def test_cli_runs_dwpose_and_names_onnxruntime_when_it_is_missing(models, tmp_path, monkeypatch, capsys):
    import json

    from PIL import Image

    from annotators.__main__ import main as cli_main

    Image.fromarray(blobs([(90, 120)])[0]).save(tmp_path / "in.png")
    assert cli_main(["dwpose", str(tmp_path / "in.png"), str(tmp_path / "pose.png"), "--models-dir", str(models),
                     "--resolution", "256", "--pose-json", str(tmp_path / "pose.json")]) == 0
    (frame,) = json.loads((tmp_path / "pose.json").read_text())
    assert len(frame["people"]) == 1 and Image.open(tmp_path / "pose.png").size == (320, 256)
    fresh = tmp_path / "fresh"  # a folder no detector was cached for
    fresh.mkdir()
    for name in (DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE):
        (fresh / name).write_bytes((models / name).read_bytes())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli_main(["dwpose", str(tmp_path / "in.png"), str(tmp_path / "o.png"), "--models-dir", str(fresh)]) == 1
    assert "'onnxruntime'" in capsys.readouterr().err and not (tmp_path / "o.png").exists()


def test_dwpose_node_returns_the_map_and_pose_keypoints(models, monkeypatch, tmp_path):
    import shutil

    import torch
    from comfy_stub import import_preprocessor_nodes

    nodes, registered, progress = import_preprocessor_nodes(monkeypatch, tmp_path)
    folder = tmp_path / "models" / "annotators"
    folder.mkdir(parents=True)
    for name in (DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE):
        shutil.copy(models / name, folder / name)
    image = torch.from_numpy(blobs([(90, 120), (200, 60)]).astype(np.float32) / 255.0)
    node = nodes.NODE_CLASS_MAPPINGS["ControlNetPack_DwposePreprocessor"]()
    control_map, pose = node.preprocess(image=image, resolution=256, draw_body=True, draw_hands=False, draw_face=False)["result"]
    assert control_map.shape == (2, 256, 320, 3) and len(pose) == 2
    assert [len(frame["people"]) for frame in pose] == [1, 1] and progress[-1] == (2, 2)
    generic_map, generic_pose = nodes.Preprocessor().preprocess(image, "dwpose", 256)["result"]
    assert generic_pose == pose and generic_map.shape == control_map.shape


def test_moving_to_a_device_keeps_cpu_sessions_unless_the_provider_changes(models):
    detector = DWPoseDetector.from_folder(models)
    session = detector.detector.session
    assert detector.to("cpu").detector.session is session  # nothing to re-open
    import onnxruntime

    moved = detector.to("cuda").detector.session
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert moved.get_providers()[0] == "CUDAExecutionProvider"
    else:  # a CPU-only onnxruntime: asking for CUDA keeps the CPU sessions
        assert moved is session
