"""DWPose over image batches: YOLOX person boxes, RTMPose whole-body keypoints, OpenPose POSE_KEYPOINT.

Per batch (all frames share one size):
1. Each frame is scaled so its short side is ``resolution`` (the detection image; no padding).
2. YOLOX sees every frame letterboxed to 640×640 (one call for the batch when the file's batch
   dimension is dynamic, else one per frame) and gives person boxes in detection pixels.
3. Every person box of every frame becomes a 288×384 affine crop; all crops go through the pose
   model together (or one by one for a fixed batch of 1); SimCC gives 133 keypoints per person.
4. The 133 keypoints become OpenPose's body, hands and face (``keypoints.to_openpose``), are mapped
   to the input's pixel grid like OpenPose's (nearest pixel, pixel centres matched) and written
   normalised. The same renderer as OpenPose draws them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..common import fit_to_resolution, to_batch_uint8, to_uint8_rgb
from ..common.checkpoint import resolve_weight_file
from ..openpose.detector import detection_to_input
from ..openpose.keypoints import encode_keypoints
from ..openpose.render import render_pose
from .checkpoint import (
    ANNOTATOR,
    DETECTOR_WEIGHT_FILE,
    POSE_WEIGHT_FILE,
    WEIGHT_SOURCE,
    OnnxModel,
    import_onnxruntime,
    load_person_detector,
    load_pose_model,
    providers_for,
)
from .detection import DetectionConfig, letterbox, person_boxes
from .keypoints import to_openpose
from .pose import crop_person, decode_simcc, to_image

DEFAULT_MAX_BATCH = 16  # images (or person crops) per onnxruntime call when the batch is dynamic


class DWPoseDetector:
    """``DWPoseDetector.from_folder(models_dir)(images)`` → (rendered maps, POSE_KEYPOINT frames)."""

    def __init__(
        self, detector: OnnxModel, pose: OnnxModel, *, detection: DetectionConfig | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        self.detector = detector
        self.pose = pose
        self.detection = detection or DetectionConfig()
        self.max_batch = max_batch
        self.device: Any = None

    @classmethod
    def from_files(cls, detector_path: str | Path, pose_path: str | Path, *, device: Any = None) -> "DWPoseDetector":
        detector = cls(load_person_detector(detector_path, device=device), load_pose_model(pose_path, device=device))
        detector.device = device
        return detector

    @classmethod
    def from_folder(cls, models_dir: str | Path) -> "DWPoseDetector":
        """Both files from ``models_dir``; a missing one is named with the folder. Never downloads."""
        paths = [
            resolve_weight_file(models_dir, name, annotator=ANNOTATOR, source=WEIGHT_SOURCE)
            for name in (DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE)
        ]
        return cls.from_files(*paths)

    def to(self, device: Any = None, dtype: Any = None) -> "DWPoseDetector":
        """Run on ``device``: CUDA when onnxruntime has it, else CPU (the sessions are re-opened only
        when that changes their execution provider). ``dtype`` is ignored: the files fix it."""
        available = self.detector.session.get_providers() + import_onnxruntime().get_available_providers()
        wanted = providers_for(device, available)
        if self.detector.session.get_providers()[:1] != wanted[:1]:
            self.detector = load_person_detector(self.detector.path, providers=wanted)
            self.pose = load_pose_model(self.pose.path, providers=wanted)
        self.device = device
        return self

    # ------------------------------------------------------------------ public API

    def detect(self, image: Any, *, resolution: int = 512) -> dict:
        """Poses in one image (H×W×C uint8 or float [0, 1]; RGB, RGBA or gray) as a POSE_KEYPOINT frame."""
        return self.detect_batch(to_uint8_rgb(image)[None], resolution=resolution)[0]

    def detect_batch(self, images: Any, *, resolution: int = 512) -> list[dict]:
        """One POSE_KEYPOINT frame per image, keypoints normalised to the input size."""
        batch = to_batch_uint8(images)
        height, width = batch.shape[1:3]
        scaled, fit = fit_to_resolution(batch, resolution, multiple=1)
        boxes = self.person_boxes(scaled)
        people = self.keypoints(scaled, boxes)
        scale_y, scale_x = fit.scale
        to_input = partial(detection_to_input, scale_x=scale_x, scale_y=scale_y, width=width, height=height)

        def encode(points: list | None) -> list[float] | None:
            return encode_keypoints(to_input(points), width, height) if points else None

        return [
            {
                "people": [
                    {
                        "pose_keypoints_2d": encode(person["body"]),
                        "face_keypoints_2d": encode(person["face"]),
                        "hand_left_keypoints_2d": encode(person["left_hand"]),
                        "hand_right_keypoints_2d": encode(person["right_hand"]),
                    }
                    for person in frame_people
                ],
                "canvas_height": int(height),
                "canvas_width": int(width),
            }
            for frame_people in people
        ]

    def __call__(
        self, images: Any, *, resolution: int = 512, draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True
    ) -> tuple[np.ndarray, list[dict]]:
        """Rendered maps (B×H×W×3 uint8, input size) and the POSE_KEYPOINT frames."""
        frames = self.detect_batch(images, resolution=resolution)
        maps = np.stack(
            [render_pose(frame, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face) for frame in frames]
        )
        return maps, frames

    # ------------------------------------------------------------------ stages

    def person_boxes(self, images: np.ndarray) -> list[np.ndarray]:
        """Person boxes (x1, y1, x2, y2 in pixels of ``images``) per frame of a ``B×H×W×3`` RGB batch."""
        prepared = [letterbox(image, self.detector.input_size) for image in images]
        (raw,) = self.detector.run(np.stack([tensor for tensor, _ in prepared]), self.max_batch)
        return [
            person_boxes(frame_raw, self.detector.input_size, ratio, self.detection)
            for frame_raw, (_, ratio) in zip(raw, prepared)
        ]

    def keypoints(self, images: np.ndarray, boxes: list[np.ndarray]) -> list[list[dict]]:
        """OpenPose parts (detection pixels) per person per frame; the crops of all frames in one batch."""
        size = self.pose.input_size
        crops = [(frame, crop_person(images[frame], box, size)) for frame, frame_boxes in enumerate(boxes) for box in frame_boxes]
        people: list[list[dict]] = [[] for _ in images]
        if not crops:
            return people
        simcc_x, simcc_y = self.pose.run(np.stack([tensor for _, (tensor, _, _) in crops]), self.max_batch)
        points, scores = decode_simcc(simcc_x, simcc_y)
        for (frame, (_, centre, scale)), crop_points, crop_scores in zip(crops, points, scores):
            people[frame].append(to_openpose(to_image(crop_points, centre, scale, size), crop_scores))
        return people
