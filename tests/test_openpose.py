"""OpenPose: POSE_KEYPOINT parsing, rendering, PAF decoding, checkpoint loading, end-to-end alignment."""
from __future__ import annotations

import colorsys
import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from annotators.common import AnnotatorInputError, MissingWeightsError
from annotators.openpose import (
    BODY_WEIGHT_FILE,
    FACE_WEIGHT_FILE,
    HAND_WEIGHT_FILE,
    BodyPoseModel,
    HandPoseModel,
    OpenPoseDetector,
    OpenPoseSettings,
    decode_bodies,
    load_body_model,
    load_face_model,
    load_hand_model,
    parse_pose_keypoints,
    render_pose,
    to_published_layout,
)

# --------------------------------------------------------------------------- a known pose

# COCO-18 on a 200×160 (W×H) canvas, pixel coordinates. Limbs are long and well separated.
POSE = {
    0: (100, 26),  # nose
    1: (100, 50),  # neck
    2: (60, 50),  # right shoulder
    3: (40, 80),  # right elbow
    4: (30, 115),  # right wrist
    5: (140, 50),  # left shoulder
    6: (160, 80),  # left elbow
    7: (170, 115),  # left wrist
    8: (80, 110),  # right hip
    9: (75, 135),  # right knee
    10: (72, 155),  # right ankle
    11: (120, 110),  # left hip
    12: (125, 135),  # left knee
    13: (128, 155),  # left ankle
    14: (88, 12),  # right eye
    15: (112, 12),  # left eye
    16: (74, 24),  # right ear
    17: (126, 24),  # left ear
}
WIDTH, HEIGHT = 200, 160

# The OpenPose/ControlNet palette (RGB), written out from the published convention.
COLOURS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip
# (part a, part b, limb index in the palette)
NECK_RSHOULDER, NECK_LSHOULDER, RELBOW_RWRIST, NECK_RHIP, RHIP_RKNEE, LHIP_LKNEE, NECK_NOSE = (
    (1, 2, 0), (1, 5, 1), (3, 4, 3), (1, 8, 6), (8, 9, 7), (11, 12, 10), (1, 0, 12),
)  # fmt: skip


def flat(points: dict[int, tuple[float, float]], count: int, scale: tuple[float, float] = (1.0, 1.0)) -> list[float]:
    values: list[float] = []
    for index in range(count):
        if index in points:
            values += [points[index][0] * scale[0], points[index][1] * scale[1], 1.0]
        else:
            values += [0.0, 0.0, 0.0]
    return values


def frame_of(body: dict, *, normalised: bool, hands: dict | None = None, face: dict | None = None) -> dict:
    scale = (1 / WIDTH, 1 / HEIGHT) if normalised else (1.0, 1.0)
    person = {"pose_keypoints_2d": flat(body, 18, scale)}
    if hands is not None:
        person["hand_left_keypoints_2d"] = flat(hands, 21, scale)
    if face is not None:
        person["face_keypoints_2d"] = flat(face, 70, scale)
    return {"people": [person], "canvas_height": HEIGHT, "canvas_width": WIDTH}


def pixel(image: np.ndarray, point: tuple[float, float]) -> tuple[int, ...]:
    return tuple(int(value) for value in image[int(round(point[1])), int(round(point[0]))])


def lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("normalised", [True, False])
def test_render_draws_limbs_and_joints_in_openpose_colours_at_their_places(normalised):
    image = render_pose(frame_of(POSE, normalised=normalised))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    for part_a, part_b, limb in (NECK_RSHOULDER, NECK_LSHOULDER, RELBOW_RWRIST, NECK_RHIP, RHIP_RKNEE, LHIP_LKNEE):
        limb_colour = tuple(int(c * 0.6) for c in COLOURS[limb])  # limbs are drawn at 60 % brightness
        middle = lerp(POSE[part_a], POSE[part_b], 0.5)
        assert pixel(image, middle) == limb_colour, f"limb {part_a}-{part_b}"
    for part, point in POSE.items():
        assert pixel(image, point) == COLOURS[part], f"joint {part}"
    # The limbs are 4 px half-width sticks: 8 px beside the neck→right-hip midpoint is background.
    middle = lerp(POSE[1], POSE[8], 0.5)
    assert pixel(image, (middle[0] + 8, middle[1] - 3)) == (0, 0, 0)
    assert pixel(image, (5, 5)) == (0, 0, 0) and pixel(image, (195, 155)) == (0, 0, 0)


def test_normalised_and_pixel_coordinates_render_identically():
    by_pixels = render_pose(frame_of(POSE, normalised=False))
    by_fraction = render_pose(frame_of(POSE, normalised=True))
    assert np.array_equal(by_pixels, by_fraction)
    assert by_pixels.any()


def test_normalised_coordinates_land_on_their_pixel_despite_float_noise():
    # 0.29 * 100 is 28.999… in floating point; the point belongs on pixel column 29.
    frame = {"people": [{"face_keypoints_2d": [0.29, 0.57, 1.0] + [0.0] * 207}], "canvas_height": 100, "canvas_width": 100}
    image = render_pose(frame)
    white, black = (255, 255, 255), (0, 0, 0)
    assert pixel(image, (29, 57)) == white
    assert pixel(image, (26, 57)) == white and pixel(image, (32, 57)) == white  # radius-3 disc centred on 29
    assert pixel(image, (25, 57)) == black and pixel(image, (33, 57)) == black


def test_missing_keypoints_and_their_limbs_are_not_drawn():
    body = dict(POSE)
    frame = frame_of(body, normalised=False)
    keypoints = frame["people"][0]["pose_keypoints_2d"]
    keypoints[3 * 4 + 2] = 0.0  # right wrist: confidence 0 (OpenPose's "not found")
    keypoints[3 * 9 : 3 * 9 + 2] = [-1.0 / WIDTH, -1.0 / HEIGHT]  # right knee: aux's negative marker
    image = render_pose(frame)
    assert pixel(image, POSE[4]) == (0, 0, 0)
    assert pixel(image, lerp(POSE[3], POSE[4], 0.5)) == (0, 0, 0)
    assert pixel(image, lerp(POSE[8], POSE[9], 0.5)) == (0, 0, 0)
    assert pixel(image, POSE[3]) == COLOURS[3]  # the elbow itself is still there


def test_render_hands_and_face_and_the_draw_switches():
    hand = {0: (50, 100), 1: (50, 130)}  # wrist → thumb base: bone 0
    face = {0: (20, 20), 69: (180, 20)}
    frame = frame_of({}, normalised=False, hands=hand, face=face)
    image = render_pose(frame)
    bone_colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(0.0, 1.0, 1.0))
    assert pixel(image, (50, 115)) == bone_colour
    assert pixel(image, hand[0]) == (0, 0, 255)  # hand joints are blue discs
    assert pixel(image, face[0]) == (255, 255, 255) and pixel(image, face[69]) == (255, 255, 255)
    assert not render_pose(frame, draw_hands=False, draw_face=False).any()
    body_only = render_pose(frame_of(POSE, normalised=True, hands=hand, face=face), draw_hands=False, draw_face=False)
    assert pixel(body_only, POSE[1]) == COLOURS[1] and body_only[20, 20].tolist() == [0, 0, 0]


# --------------------------------------------------------------------------- parsing


def test_parse_accepts_json_text_lists_and_single_frames():
    frames = [frame_of(POSE, normalised=True), frame_of(POSE, normalised=False)]
    parsed = parse_pose_keypoints(json.dumps(frames))
    assert len(parsed) == 2
    assert parsed[1]["people"][0]["pose_keypoints_2d"][:3] == [100.0, 26.0, 1.0]
    assert parsed[0]["people"][0]["hand_left_keypoints_2d"] is None
    assert parse_pose_keypoints(frames[0])[0]["canvas_width"] == WIDTH
    empty_hand = copy.deepcopy(frames[0])
    empty_hand["people"][0]["hand_right_keypoints_2d"] = []  # OpenPose writes [] for "not run"
    assert parse_pose_keypoints(empty_hand)[0]["people"][0]["hand_right_keypoints_2d"] is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: "{not json", "invalid JSON at line 1"),
        (lambda f: [], "empty list"),
        (lambda f: {**f, "people": None}, "frame.people: expected a list of people"),
        (lambda f: {k: v for k, v in f.items() if k != "canvas_width"}, "'canvas_width'"),
        (lambda f: {**f, "canvas_height": -5}, "canvas_height: expected a positive integer"),
        (lambda f: {**f, "canvas_width": 10**6}, "canvas_width: expected a positive integer of at most"),
        (lambda f: {**f, "people": [{"pose_keypoints_2d": [0.5] * 75}]}, "BODY_25"),
        (lambda f: {**f, "people": [{"pose_keypoints_2d": [[0.5, 0.5, 1.0]] * 18}]}, "flatten them"),
        (lambda f: {**f, "people": [{"pose_keypoints_2d": [0.5] * 53 + ["x"]}]}, "pose_keypoints_2d[53]: expected a number"),
        (lambda f: {**f, "people": [{"pose_keypoints_2d": [0.5] * 53 + [float("nan")]}]}, "finite"),
        (lambda f: {**f, "people": [{"hand_left_keypoints_2d": [0.5] * 60}]}, "63 numbers (21 keypoints"),
        (lambda f: {**f, "people": [{"nose": 1}]}, "at least one of"),
    ],
)
def test_parse_rejects_malformed_keypoints_with_a_precise_message(mutate, message):
    with pytest.raises(AnnotatorInputError) as caught:
        parse_pose_keypoints(mutate(frame_of(POSE, normalised=True)))
    assert message in str(caught.value)


def test_render_rejects_a_malformed_frame():
    with pytest.raises(AnnotatorInputError, match="54 numbers"):
        render_pose({"people": [{"pose_keypoints_2d": [1, 2, 3]}], "canvas_height": 8, "canvas_width": 8})


# --------------------------------------------------------------------------- decoding


def gaussian_heatmaps(
    points: list[dict[int, tuple[float, float]]], height: int, width: int, sigma: float, channels: int = 19
) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    maps = np.zeros((height, width, channels), np.float32)
    for person in points:
        for part, (x, y) in person.items():
            maps[:, :, part] = np.maximum(maps[:, :, part], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return maps


# Limb → PAF channel pairs of the published COCO model (from the OpenPose model description).
LIMB_CHANNELS = {
    (1, 2): (12, 13), (1, 5): (20, 21), (2, 3): (14, 15), (3, 4): (16, 17), (5, 6): (22, 23), (6, 7): (24, 25),
    (1, 8): (0, 1), (8, 9): (2, 3), (9, 10): (4, 5), (1, 11): (6, 7), (11, 12): (8, 9), (12, 13): (10, 11),
    (1, 0): (28, 29), (0, 14): (30, 31), (14, 16): (34, 35), (0, 15): (32, 33), (15, 17): (36, 37),
    (2, 16): (18, 19), (5, 17): (26, 27),
}  # fmt: skip


def affinity_fields(points: list[dict[int, tuple[float, float]]], height: int, width: int, half_width: float) -> np.ndarray:
    """Unit vectors along each limb, within ``half_width`` pixels of the segment."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    fields = np.zeros((height, width, 38), np.float32)
    for person in points:
        for (a, b), (cx, cy) in LIMB_CHANNELS.items():
            if a not in person or b not in person:
                continue
            (x0, y0), (x1, y1) = person[a], person[b]
            length = math.hypot(x1 - x0, y1 - y0)
            ux, uy = (x1 - x0) / length, (y1 - y0) / length
            along = (xs - x0) * ux + (ys - y0) * uy
            across = np.abs((xs - x0) * uy - (ys - y0) * ux)
            on_limb = (along >= 0) & (along <= length) & (across <= half_width)
            fields[:, :, cx][on_limb] = ux
            fields[:, :, cy][on_limb] = uy
    return fields


def shifted(pose: dict, dx: float, dy: float = 0.0) -> dict:
    return {part: (x + dx, y + dy) for part, (x, y) in pose.items()}


def test_decode_recovers_two_known_skeletons_from_synthetic_heatmaps_and_pafs():
    second = {part: (x * 0.8 + 210, y * 0.8 + 20) for part, (x, y) in POSE.items() if part != 17}  # no left ear
    people_in = [POSE, second]
    heatmaps = gaussian_heatmaps(people_in, 200, 400, sigma=2.0)
    pafs = affinity_fields(people_in, 200, 400, half_width=3.0)
    people = decode_bodies(heatmaps, pafs)
    assert len(people) == 2
    people.sort(key=lambda person: person[1].x)  # by neck x
    for decoded, truth in zip(people, people_in):
        for part in range(18):
            if part not in truth:
                assert decoded[part] is None
                continue
            assert decoded[part] is not None, f"part {part} lost"
            assert abs(decoded[part].x - round(truth[part][0])) <= 1 and abs(decoded[part].y - round(truth[part][1])) <= 1


def test_decode_needs_the_affinity_field_to_connect_parts():
    heatmaps = gaussian_heatmaps([POSE], 160, 200, sigma=2.0)
    assert decode_bodies(heatmaps, np.zeros((160, 200, 38), np.float32)) == []
    # Fields pointing the wrong way along every limb do not connect either.
    assert decode_bodies(heatmaps, -affinity_fields([POSE], 160, 200, half_width=3.0)) == []


def test_hand_keypoints_from_synthetic_heatmaps():
    from annotators.openpose.hand_decode import hand_peaks

    # 21 known points on the 128² heatmap grid of a 256×192 (W×H) crop; part 20 has no heat at all.
    truth = {part: (10 + 5 * part, 100 - 4 * part) for part in range(20)}
    heatmaps = gaussian_heatmaps([truth], 128, 128, sigma=2.0, channels=22)
    heatmaps[:, :, 5] += 0.3 * gaussian_heatmaps([{5: (110, 20)}], 128, 128, sigma=2.0, channels=22)[:, :, 5]  # weaker rival blob
    points = hand_peaks(heatmaps, crop_height=192, crop_width=256)
    assert points[20] is None
    for part, (x, y) in truth.items():
        assert points[part] == (int(x * 256 / 128), int(y * 192 / 128)), part


def test_hand_boxes_follow_the_openpose_rule():
    from annotators.openpose.hand_decode import hand_boxes

    body: list = [None] * 18
    body[5], body[6], body[7] = (100.0, 50.0), (100.0, 90.0), (100.0, 120.0)  # left arm, forearm 30 px
    (box,) = hand_boxes(body, 300, 300)
    # Centre 0.33 forearm beyond the wrist (y = 129.9); side 1.5 × max(30, 0.9 × 40) = 54; top-left
    # corner (100 - 27, 129.9 - 27) in whole pixels.
    assert box.is_left and box.size == 54 and (box.x, box.y) == (73, 102)
    body[7] = (100.0, 95.0)  # a tiny forearm near the image edge: the box would be under 20 px
    body[5], body[6] = (100.0, 93.0), (100.0, 94.0)
    assert hand_boxes(body, 300, 300) == []


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Random weights saved in the published key layout (flat layer names) as the real file names."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.manual_seed(0)
    torch.save(to_published_layout(BodyPoseModel()), folder / BODY_WEIGHT_FILE)
    torch.save(to_published_layout(HandPoseModel()), folder / HAND_WEIGHT_FILE)
    torch.save(published_face_state(), folder / FACE_WEIGHT_FILE)  # written from the reference, below
    return folder


def test_published_layout_is_flat_layer_names(weights_dir):
    state = torch.load(weights_dir / BODY_WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert len(state) == 184 and state["conv1_1.weight"].shape == (64, 3, 3, 3)
    assert state["Mconv7_stage6_L1.weight"].shape == (38, 128, 1, 1)
    assert state["Mconv7_stage6_L2.weight"].shape == (19, 128, 1, 1)
    hand = torch.load(weights_dir / HAND_WEIGHT_FILE, map_location="cpu", weights_only=True)
    assert len(hand) == 104 and hand["Mconv1_stage2.weight"].shape == (128, 150, 7, 7)


def test_loaders_load_the_published_layout_exactly(weights_dir):
    state = torch.load(weights_dir / BODY_WEIGHT_FILE, map_location="cpu", weights_only=True)
    model = load_body_model(weights_dir / BODY_WEIGHT_FILE)
    assert torch.equal(model.stages[5].heatmap.Mconv7_stage6_L2.weight, state["Mconv7_stage6_L2.weight"])
    assert torch.equal(model.backbone.conv4_4_CPM.bias, state["conv4_4_CPM.bias"])
    hand_state = torch.load(weights_dir / HAND_WEIGHT_FILE, map_location="cpu", weights_only=True)
    hand = load_hand_model(weights_dir / HAND_WEIGHT_FILE)
    assert torch.equal(hand.stages[0].conv6_2_CPM.weight, hand_state["conv6_2_CPM.weight"])


def test_wrong_truncated_and_missing_files_get_clear_errors(weights_dir, tmp_path):
    with pytest.raises(AnnotatorInputError) as caught:
        load_body_model(weights_dir / HAND_WEIGHT_FILE)
    message = str(caught.value)
    assert HAND_WEIGHT_FILE in message and "missing" in message and "looks like the OpenPose hand model" in message

    state = torch.load(weights_dir / BODY_WEIGHT_FILE, map_location="cpu", weights_only=True)
    state["conv5_5_CPM_L1.weight"] = state["conv5_5_CPM_L1.weight"][:30]
    del state["Mconv7_stage6_L2.bias"]
    garbled = tmp_path / "garbled.pth"
    torch.save(state, garbled)
    with pytest.raises(AnnotatorInputError) as caught:
        load_body_model(garbled)
    message = str(caught.value)
    assert "'Mconv7_stage6_L2.bias'" in message
    assert "'conv5_5_CPM_L1.weight' expected [38, 512, 1, 1] found [30, 512, 1, 1]" in message

    truncated = tmp_path / BODY_WEIGHT_FILE
    truncated.write_bytes((weights_dir / BODY_WEIGHT_FILE).read_bytes()[:5000])
    with pytest.raises(AnnotatorInputError, match="cannot read weight file .*truncated"):
        load_body_model(truncated)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError) as missing:
        OpenPoseDetector.from_folder(empty)
    assert BODY_WEIGHT_FILE in str(missing.value) and str(empty) in str(missing.value)


def test_hands_requested_without_the_hand_file_names_it(weights_dir, tmp_path):
    (tmp_path / BODY_WEIGHT_FILE).symlink_to(weights_dir / BODY_WEIGHT_FILE)
    detector = OpenPoseDetector.from_folder(tmp_path)
    with pytest.raises(MissingWeightsError, match=HAND_WEIGHT_FILE):
        detector.detect(np.zeros((16, 16, 3), np.uint8), include_hands=True)


def test_real_networks_run_batched_on_tiny_inputs(weights_dir):
    detector = OpenPoseDetector.from_folder(weights_dir)
    detector.settings = OpenPoseSettings(body_box_size=64, hand_box_size=32, hand_scales=(1.0,))
    batch = np.random.default_rng(0).integers(0, 256, (2, 30, 45, 4), dtype=np.uint8)  # RGBA, odd size
    maps, frames = detector(batch, resolution=64)
    assert maps.shape == (2, 30, 45, 3) and maps.dtype == np.uint8
    assert [(f["canvas_height"], f["canvas_width"]) for f in frames] == [(30, 45)] * 2
    # The hand network on a crop: 21 keypoints, each inside the crop or absent.
    body = [None] * 18
    body[2], body[3], body[4] = (20.0, 10.0), (24.0, 30.0), (28.0, 50.0)  # right arm
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    (left, right), = detector._detect_hands(image, [body])
    assert left is None and right is not None and len(right) == 21
    assert all(point is None or (0 <= point[0] < 64 and 0 <= point[1] < 64) for point in right)


class RecordingBodyNetwork(nn.Module):
    """Stands in for the body network: keeps every input it is given and answers with empty maps."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # device/dtype probe
        self.config = type("Config", (), {"stride": 8, "heatmap_channels": 19})()
        self.inputs: list[torch.Tensor] = []

    def forward(self, batch: torch.Tensor):
        self.inputs.append(batch.clone())
        height, width = batch.shape[-2] // 8, batch.shape[-1] // 8
        return torch.zeros(len(batch), 38, height, width), torch.zeros(len(batch), 19, height, width)


@pytest.mark.parametrize("height, width", [(650, 512), (512, 650), (910, 512)])
def test_body_network_sees_the_image_at_the_reference_scale(height, width):
    # The reference (pytorch-openpose body.py, as controlnet_aux runs it) resizes the detection
    # image by 0.5 × 368 / its height and pads the result with grey (128) to a multiple of 8. At
    # resolution 512 these images are their own detection image (short side 512); the fit pads
    # them to a multiple of 64 (650 → 704, 910 → 960), and that padding must not enter the scale.
    image = np.zeros((height, width, 3), np.uint8)
    top, bottom = 100, height - 100  # a white "person" standing in the middle, feet 100 px above the bottom
    image[top:bottom, width // 2 - 40 : width // 2 + 40] = 255
    network = RecordingBodyNetwork()
    OpenPoseDetector(network).detect(image, resolution=512, include_hands=False)
    (tensor,) = network.inputs
    scale = 184 / height
    content_h, content_w = round(height * scale), round(width * scale)
    assert tensor.shape == (1, 3, -(-content_h // 8) * 8, -(-content_w // 8) * 8)
    inside = (tensor[0] != 0.0).any(dim=0)  # grey padding is exactly 128 / 256 - 0.5 = 0
    assert inside.any(dim=1).sum() == content_h and inside.any(dim=0).sum() == content_w
    person_rows = (tensor[0, 0] > 0.0).any(dim=1).nonzero()
    person_height = int(person_rows.max() - person_rows.min() + 1)
    # 450 / 650 × 184 = 127.4 rows for the first case; resampling blurs the ends by a row at most.
    assert abs(person_height - (bottom - top) * scale) <= 1.5


# --------------------------------------------------------------------------- end-to-end alignment


def marker_value(part: int) -> int:
    return 40 + 10 * part  # distinct red levels, one per part


def draw_markers(image: np.ndarray, points: dict[int, tuple[float, float]], hand: bool = False) -> None:
    for part, (x, y) in points.items():
        # Red identifies the part; full green (body) or blue (hand) tells markers from each other
        # and from the network input's grey padding.
        flag = (0, 255) if hand else (255, 0)
        image[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5] = (marker_value(part), *flag)


class MarkerNetwork(nn.Module):
    """Stands in for a pose network: finds the red markers in its input and answers with heatmaps
    (and, for the body, PAFs) on the stride-8 output grid, as the real network's outputs are laid out."""

    def __init__(self, num_parts: int, body: bool) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # device/dtype probe
        self.num_parts, self.body = num_parts, body
        self.config = type("Config", (), {"stride": 8, "heatmap_channels": num_parts + 1})()

    def locate(self, image: torch.Tensor) -> dict[int, tuple[float, float]]:
        pixels = np.rint((image.numpy() + 0.5) * 256.0)  # BGR input scaled to pixel/256 - 0.5
        red, flag = pixels[2], pixels[1 if self.body else 0]
        part = np.rint((red - marker_value(0)) / 10.0)
        labels = np.where(
            (np.abs(red - marker_value(0) - 10.0 * part) <= 2) & (flag >= 250) & (part >= 0) & (part < self.num_parts),
            part,
            -1,
        )
        # Keep marker interiors only: resampled edges of other markers pass through these levels too.
        padded = np.pad(labels, 1, constant_values=-1)
        height, width = labels.shape
        interior = labels >= 0
        for dy in range(3):
            for dx in range(3):
                interior &= padded[dy : dy + height, dx : dx + width] == labels
        ys, xs = np.nonzero(interior)
        found_parts = labels[ys, xs]
        return {
            int(p): (float(xs[found_parts == p].mean()), float(ys[found_parts == p].mean()))
            for p in np.unique(found_parts)
        }

    def forward(self, batch: torch.Tensor):
        height, width = batch.shape[-2] // 8, batch.shape[-1] // 8
        heatmaps, pafs = [], []
        for image in batch:
            # Output cell (i, j) looks at input pixels 8i..8i+7: its centre is input pixel 8i + 3.5.
            points = {p: ((x - 3.5) / 8, (y - 3.5) / 8) for p, (x, y) in self.locate(image).items()}
            heat = gaussian_heatmaps([points], height, width, sigma=1.0, channels=self.num_parts + 1)
            heatmaps.append(torch.from_numpy(heat).permute(2, 0, 1))
            if self.body:
                pafs.append(torch.from_numpy(affinity_fields([points], height, width, half_width=1.0)).permute(2, 0, 1))
        if self.body:
            return torch.stack(pafs), torch.stack(heatmaps)
        return torch.stack(heatmaps)


@pytest.mark.parametrize("size, resolution", [((150, 190), 192), ((320, 400), 256)])
def test_detected_keypoints_land_on_the_input_pixels(size, resolution):
    height, width = size
    scale = 0.85 * min(height / HEIGHT, width / WIDTH)  # keep clear of the borders
    truths = [
        {part: (x * scale + 2, y * scale + 3) for part, (x, y) in POSE.items()},
        {part: (x * scale * 0.9 + 8, y * scale * 0.9 + 6) for part, (x, y) in POSE.items()},
    ]
    batch = np.zeros((2, height, width, 3), np.uint8)
    for image, truth in zip(batch, truths):
        draw_markers(image, truth)
    detector = OpenPoseDetector(MarkerNetwork(18, body=True), MarkerNetwork(21, body=False))
    # Run the body "network" at the detection resolution so markers stay readable.
    detector.settings = OpenPoseSettings(body_scale=1.0, body_box_size=resolution + 64)
    frames = detector.detect_batch(batch, resolution=resolution, include_hands=False)
    detector.settings = OpenPoseSettings(body_scale=1.0, body_box_size=resolution + 64, batch_size=1)
    assert detector.detect_batch(batch, resolution=resolution, include_hands=False) == frames  # chunking is invisible
    for frame, truth in zip(frames, truths):
        assert (frame["canvas_height"], frame["canvas_width"]) == (height, width)
        (person,) = frame["people"]
        keypoints = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
        assert (keypoints[:, 2] == 1.0).all()
        found = keypoints[:, :2] * [width, height]
        expected = np.array([truth[part] for part in range(18)])
        # Markers are 9 px squares centred on (int(x), int(y)).
        assert np.abs(found - np.floor(expected)).max() <= 2.0
        # And the rendered map puts the neck colour on the neck.
        rendered = render_pose(frame)
        assert pixel(rendered, truth[1]) == COLOURS[1]


def test_detected_hand_keypoints_land_on_the_input_pixels():
    height, width, scale = 320, 400, 1.7
    body = {part: (x * scale + 2, y * scale + 3) for part, (x, y) in POSE.items()}
    image = np.zeros((height, width, 3), np.uint8)
    draw_markers(image, body)
    hands = {}
    for side, (elbow, wrist) in (("left", (6, 7)), ("right", (3, 4))):
        (ex, ey), (wx, wy) = body[elbow], body[wrist]
        # OpenPose looks for the hand a third of a forearm beyond the wrist; lay 21 markers there
        # on a 5×5 grid (11 px apart), clear of the wrist marker.
        cx, cy = wx + 0.33 * (wx - ex), wy + 0.33 * (wy - ey)
        grid = [(cx + dx, cy + dy) for dy in (-6, 5, 16, 27, 38) for dx in (-22, -11, 0, 11, 22)]
        hands[side] = dict(enumerate(grid[:21]))
        draw_markers(image, hands[side], hand=True)
    detector = OpenPoseDetector(MarkerNetwork(18, body=True), MarkerNetwork(21, body=False))
    detector.settings = OpenPoseSettings(body_scale=1.0, body_box_size=320, hand_scales=(0.5, 1.0))
    frame = detector.detect(image, resolution=256, include_hands=True)
    (person,) = frame["people"]
    for side in ("left", "right"):
        keypoints = np.array(person[f"hand_{side}_keypoints_2d"]).reshape(21, 3)
        assert (keypoints[:, 2] == 1.0).all(), side
        found = keypoints[:, :2] * [width, height]
        expected = np.floor([hands[side][part] for part in range(21)])
        assert np.abs(found - expected).max() <= 2.5, side


# --------------------------------------------------------------------------- face network (facenet.pth)

# The published facenet.pth, written out from the reference FaceNet (controlnet_aux open_pose/face.py):
# bare layer names, (out, in, kernel) per conv; ReLU after every conv but conv6_2_CPM and Mconv7_*,
# 2×2 max pools after conv1_2, conv2_2 and conv3_4; stages 2..6 read [previous heatmaps, features].
FACE_BACKBONE = [
    ("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), "pool", ("conv2_1", 128, 64, 3), ("conv2_2", 128, 128, 3), "pool",
    ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), "pool",
    ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 128, 512, 3),
]  # fmt: skip
FACE_STAGE1 = [("conv6_1_CPM", 512, 128, 1), ("conv6_2_CPM", 71, 512, 1)]


def face_stage(stage: int) -> list[tuple[str, int, int, int]]:
    return [(f"Mconv1_stage{stage}", 128, 199, 7)] + [(f"Mconv{i}_stage{stage}", 128, 128, 7) for i in range(2, 6)] + [
        (f"Mconv6_stage{stage}", 128, 128, 1), (f"Mconv7_stage{stage}", 71, 128, 1)]


FACE_LAYERS = [item for item in FACE_BACKBONE if item != "pool"] + FACE_STAGE1 + [
    layer for stage in range(2, 7) for layer in face_stage(stage)
]


def published_face_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, out_channels, in_channels, kernel in FACE_LAYERS:
        fan_in = in_channels * kernel * kernel
        state[f"{name}.weight"] = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) / fan_in**0.5
        state[f"{name}.bias"] = torch.randn(out_channels, generator=generator) * 0.1
    return state


def reference_face_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference network's forward, written from its description with plain functional ops."""

    def conv(h, name, relu=True):
        weight = state[f"{name}.weight"]
        out = torch.nn.functional.conv2d(h, weight, state[f"{name}.bias"], padding=weight.shape[-1] // 2)
        return torch.relu(out) if relu else out

    h = x
    for item in FACE_BACKBONE:
        h = torch.nn.functional.max_pool2d(h, 2, 2) if item == "pool" else conv(h, item[0])
    features = h
    h = conv(conv(features, "conv6_1_CPM"), "conv6_2_CPM", relu=False)
    for stage in range(2, 7):
        h = torch.cat([h, features], dim=1)
        for index, (name, *_shape) in enumerate(face_stage(stage)):
            h = conv(h, name, relu=index < 6)
    return h


def test_face_model_loads_the_published_layout_and_computes_the_reference_network(weights_dir, tmp_path):
    state = torch.load(weights_dir / FACE_WEIGHT_FILE, weights_only=True)
    assert len(state) == 104
    # The same tensors as a training checkpoint would hold them: nested container, DataParallel prefix.
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, tmp_path / "wrapped.pth")
    x = torch.rand(2, 3, 48, 40) - 0.5
    expected = reference_face_forward(state, x)
    assert expected.shape == (2, 71, 6, 5)
    for path in (weights_dir / FACE_WEIGHT_FILE, tmp_path / "wrapped.pth"):
        model = load_face_model(path)
        with torch.no_grad():
            assert torch.equal(model(x), expected)


def test_face_and_hand_files_are_told_apart(weights_dir):
    with pytest.raises(AnnotatorInputError) as caught:
        load_face_model(weights_dir / HAND_WEIGHT_FILE)
    message = str(caught.value)
    assert HAND_WEIGHT_FILE in message and "the OpenPose face model (facenet.pth)" in message
    assert "'conv6_2_CPM.weight' expected [71, 512, 1, 1] found [22, 512, 1, 1]" in message
    assert "looks like the OpenPose hand model" in message
    with pytest.raises(AnnotatorInputError, match="looks like the OpenPose face model"):
        load_hand_model(weights_dir / FACE_WEIGHT_FILE)
    with pytest.raises(AnnotatorInputError, match="looks like the OpenPose body model"):
        load_face_model(weights_dir / BODY_WEIGHT_FILE)


def test_face_requested_without_facenet_names_the_file_and_folder(weights_dir, tmp_path):
    (tmp_path / BODY_WEIGHT_FILE).symlink_to(weights_dir / BODY_WEIGHT_FILE)
    detector = OpenPoseDetector.from_folder(tmp_path)
    detector.settings = OpenPoseSettings(body_box_size=16)  # small network inputs: this test is about files
    with pytest.raises(MissingWeightsError) as missing:
        detector.detect(np.zeros((16, 16, 3), np.uint8), include_hands=False, include_face=True)
    assert FACE_WEIGHT_FILE in str(missing.value) and str(tmp_path) in str(missing.value)
    # Put the file in the folder: the same detector picks it up when a face is asked for, not before.
    (tmp_path / FACE_WEIGHT_FILE).symlink_to(weights_dir / FACE_WEIGHT_FILE)
    detector.detect(np.zeros((16, 16, 3), np.uint8), resolution=64, include_hands=False)
    assert detector.face_model is None
    frame = detector.detect(np.zeros((16, 16, 3), np.uint8), resolution=64, include_hands=False, include_face=True)
    assert frame["people"] == [] and detector.face_model is not None


def test_face_box_follows_the_reference_rule():
    from annotators.openpose.face_decode import face_box

    body: list = [None] * 18
    body[0] = (100.0, 80.0)  # nose
    assert face_box(body, 300, 300) is None  # a nose alone gives no box
    body[14] = (90.0, 74.0)  # an eye: half side 3 × max(10, 6) = 30
    body[16] = (70.0, 78.0)  # an ear: 1.5 × max(30, 2) = 45 wins
    box = face_box(body, 300, 300)
    assert (box.x, box.y, box.size) == (55, 35, 90)
    # Near the top/left border the corner is clamped and the side kept (the crop then runs past the
    # face's far side, as in the reference).
    body[0], body[14], body[16] = (20.0, 10.0), (15.0, 5.0), None
    box = face_box(body, 300, 300)
    assert (box.x, box.y, box.size) == (5, 0, 30)
    # At the bottom/right border the reference compares the box's centre (the nose) with the border,
    # so the side is kept and the box overhangs; the crop is cut to the image (40 px wide here).
    body[0], body[14] = (290.0, 150.0), (280.0, 150.0)
    assert face_box(body, 300, 300) == type(box)(260, 120, 60)
    body[0], body[14] = (8.0, 8.0), (6.0, 7.0)  # half side 6: a 12 px box is under the 20 px minimum
    assert face_box(body, 300, 300) is None


def test_face_keypoints_are_the_heatmap_maxima_above_the_threshold():
    from annotators.openpose.face_decode import face_peaks

    heatmaps = np.zeros((40, 50, 71), np.float32)
    heatmaps[:, :, 70] = 1.0  # the background map: never a keypoint
    heatmaps[12, 30, 0] = 0.9
    heatmaps[25, 3, 0] = 0.5  # a weaker rival
    heatmaps[7, 44, 69] = 0.06  # just above the 0.05 threshold
    heatmaps[1, 1, 5] = 0.05  # not above it
    peaks = face_peaks(heatmaps)
    assert len(peaks) == 70
    assert peaks[0] == (30, 12) and peaks[69] == (44, 7)
    assert peaks[5] is None and all(peaks[i] is None for i in range(1, 69) if i != 5)


def test_detected_face_keypoints_land_on_the_input_pixels():
    height, width, scale = 320, 400, 1.7
    body = {part: (x * scale + 2, y * scale + 3) for part, (x, y) in POSE.items()}
    image = np.zeros((height, width, 3), np.uint8)
    draw_markers(image, body)
    # The face box (nose ± 3 × the nose-eye distance) is x 100..242, y 0..142; 21 face markers on a
    # 7 × 3 grid inside it, clear of the body's markers. Parts 21..69 have no marker: absent.
    face = {part: (120 + 17 * (part % 7), (60, 72, 108)[part // 7]) for part in range(21)}
    draw_markers(image, face, hand=True)
    face_network = MarkerNetwork(70, body=False)
    face_network.config = type("Config", (), {"stride": 8, "heatmap_channels": 71})()
    detector = OpenPoseDetector(MarkerNetwork(18, body=True), face_model=face_network)
    detector.settings = OpenPoseSettings(body_scale=1.0, body_box_size=320)
    frame = detector.detect(image, resolution=320, include_hands=False, include_face=True)
    (person,) = frame["people"]
    keypoints = np.array(person["face_keypoints_2d"]).reshape(70, 3)
    assert (keypoints[:21, 2] == 1.0).all() and (keypoints[21:] == 0.0).all()
    found = keypoints[:21, :2] * [width, height]
    expected = np.array([face[part] for part in range(21)], np.float64)
    # Markers are 9 px squares; the 142 px crop is seen at 384 px and its heatmaps come back on an
    # 8 px grid, so a keypoint lands within a grid cell's half-width (8 × 142 / 384 / 2 ≈ 1.5 px).
    assert np.abs(found - expected).max() <= 2.0
    rendered = render_pose(frame)
    assert pixel(rendered, face[3]) == (255, 255, 255)


def test_real_face_network_runs_on_batched_crops(weights_dir):
    detector = OpenPoseDetector.from_files(weights_dir / BODY_WEIGHT_FILE, face_path=weights_dir / FACE_WEIGHT_FILE)
    from annotators.openpose.face_decode import FaceDecodeConfig

    detector.settings = OpenPoseSettings(face=FaceDecodeConfig(input_size=64))
    people = []
    for dx in (0, 30):
        body: list = [None] * 18
        body[0], body[14], body[15] = (20.0 + dx, 30.0), (14.0 + dx, 26.0), (26.0 + dx, 26.0)
        people.append(body)
    people.append([None] * 18)  # no head: no face
    image = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    detector.settings = OpenPoseSettings(face=FaceDecodeConfig(input_size=64), batch_size=2)  # 3 crops: 2 forwards
    faces_per_frame = detector._detect_faces([image, image[:, ::-1]], [people, people[:1]])
    assert [len(faces) for faces in faces_per_frame] == [3, 1]
    faces = faces_per_frame[0]
    assert faces[2] is None
    for face in faces[:2] + faces_per_frame[1]:
        assert len(face) == 70
        assert all(point is None or (0 <= point[0] < 80 and 0 <= point[1] < 64) for point in face)


@pytest.mark.parametrize("name", ["openpose_face", "openpose_full"])
def test_openpose_face_and_full_run_by_name_with_pose_keypoints(weights_dir, name, monkeypatch):
    from annotators import run_annotator
    from annotators.neural import load_detector
    from annotators.openpose.face_decode import FaceDecodeConfig

    # The cached detector run_annotator will use, with small network inputs to keep the test fast.
    detector = load_detector("openpose", "OpenPoseDetector", str(weights_dir))
    small = OpenPoseSettings(body_box_size=64, hand_box_size=32, hand_scales=(1.0,), face=FaceDecodeConfig(input_size=64))
    monkeypatch.setattr(detector, "settings", small)
    batch = np.random.default_rng(3).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    result = run_annotator(name, batch, resolution=64, models_dir=str(weights_dir))
    assert result.images.shape == (2, 20, 28, 3) and result.images.dtype == np.uint8
    assert [(f["canvas_height"], f["canvas_width"]) for f in result.pose_keypoints] == [(20, 28)] * 2


# --------------------------------------------------------------------------- controlnet_aux as the oracle (where installed)


def test_face_network_box_and_peaks_match_controlnet_aux(monkeypatch, weights_dir):
    import sys

    from aux_reference import load

    from annotators.openpose.face_decode import face_box, face_peaks

    reference = load(monkeypatch, "open_pose.face")
    package = reference.__name__.rsplit(".", 1)[0]
    util, body_module = sys.modules[f"{package}.util"], sys.modules[f"{package}.body"]
    # The network: the reference FaceNet holding the published state dict, against ours loaded from the file.
    state = torch.load(weights_dir / FACE_WEIGHT_FILE, weights_only=True)
    theirs = reference.FaceNet().eval()
    theirs.load_state_dict(state)
    ours = load_face_model(weights_dir / FACE_WEIGHT_FILE)
    x = torch.rand(2, 3, 64, 56) - 0.5
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x)[-1])
    # The box rule, on random skeletons (pixels) with random missing eyes and ears.
    rng = np.random.default_rng(7)
    for _ in range(300):
        points = [(float(x), float(y)) for x, y in rng.uniform(0, 200, (18, 2))]
        body = [point if keep else None for point, keep in zip(points, rng.random(18) > 0.4)]
        keypoints = [None if point is None else body_module.Keypoint(point[0], point[1]) for point in body]
        expected = util.faceDetect(body_module.BodyResult(keypoints, 0.0, 0), np.zeros((160, 200, 3), np.uint8))
        box = face_box(body, 160, 200)
        assert (None if box is None else (box.x, box.y, box.size)) == expected
    # The peaks, where every keypoint clears the threshold (the reference then keeps their order); the
    # reference also appends the background map's maximum as a 71st point, which is not a keypoint.
    heatmaps = rng.random((71, 30, 40)).astype(np.float32) * 0.2 + 0.06
    expected = reference.Face.compute_peaks_from_heatmaps(None, heatmaps)
    assert len(expected) == 71
    assert face_peaks(heatmaps.transpose(1, 2, 0)) == [tuple(point) for point in expected[:70].tolist()]
