"""OpenPose body (+ hand, + face) detection: network passes, decoding, and keypoints in input coordinates.

Pipeline per batch (all frames share one size):
1. Scale the frames so the short side is ``resolution`` (the common fit; its padding to a
   multiple of 64 is cropped off again). The body network sees that detection image at
   ``body_scale × body_box_size / image height``, the scale the published model is used at,
   padded to a multiple of 8 with grey (128).
2. One batched forward pass. Heatmaps and PAFs are upsampled ×8, cropped to the unpadded network
   input and resized to the detection image: the decoding runs at the detection resolution, as
   in the reference.
3. Hands: a square crop per visible forearm, run at several scales (all crops of a scale batched),
   averaged heatmaps → 21 keypoints.
   Face: a square crop around the nose (sized from the eyes and ears), resized to 384², the crops
   of all frames batched; the heatmaps are resized to the crop and each of the 70 keypoints is its
   map's maximum.
4. Keypoints are mapped back to the input's pixel grid (pixel-centre convention, the same mapping
   the rendered control maps use) and written normalised, as comfyui_controlnet_aux does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..common import MissingWeightsError, fit_to_resolution, to_batch_uint8, to_uint8_rgb
from ..common.checkpoint import resolve_weight_file
from .body_decode import BodyDecodeConfig, decode_bodies
from .body_model import BodyPoseModel
from .checkpoint import (
    ANNOTATOR,
    BODY_WEIGHT_FILE,
    FACE_WEIGHT_FILE,
    HAND_WEIGHT_FILE,
    WEIGHT_SOURCE,
    load_body_model,
    load_face_model,
    load_hand_model,
)
from .face_decode import FaceDecodeConfig, face_box, face_peaks
from .face_model import FacePoseModel
from .hand_decode import HandBox, HandDecodeConfig, hand_boxes, hand_peaks
from .hand_model import HandPoseModel
from .keypoints import encode_keypoints
from .render import render_pose

Point = tuple[float, float]


@dataclass(frozen=True)
class OpenPoseSettings:
    """Input scales and thresholds; the defaults are those ControlNet's maps were made with."""

    body_box_size: int = 368
    body_scale: float = 0.5
    hand_box_size: int = 368
    hand_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    hand_blur_sigma: float = 0.8
    pad_value: int = 128
    batch_size: int = 8  # frames per body-network forward pass
    body: BodyDecodeConfig = field(default_factory=BodyDecodeConfig)
    hand: HandDecodeConfig = field(default_factory=HandDecodeConfig)
    face: FaceDecodeConfig = field(default_factory=FaceDecodeConfig)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _network_input(frames_bgr: list[np.ndarray], height: int, width: int, pad_value: int, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to ``height×width``, pad bottom/right to a multiple of ``stride``, scale to pixel/256 - 0.5."""
    padded_h, padded_w = -(-height // stride) * stride, -(-width // stride) * stride
    batch = np.full((len(frames_bgr), padded_h, padded_w, 3), pad_value, dtype=np.uint8)
    for index, frame in enumerate(frames_bgr):
        batch[index, :height, :width] = _resize(frame, height, width)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 256.0 - 0.5
    return tensor, (height, width)


def _outputs_to_grid(outputs: torch.Tensor, stride: int, valid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Stride-``stride`` network maps → the ``size`` grid of the image the network input was made from."""
    upsampled = F.interpolate(outputs.float(), scale_factor=stride, mode="bicubic", align_corners=False)
    upsampled = upsampled[:, :, : valid[0], : valid[1]]
    return F.interpolate(upsampled, size=size, mode="bicubic", align_corners=False)


def detection_to_input(
    points: list[Point | None], *, scale_x: float, scale_y: float, width: int, height: int
) -> list[Point | None]:
    """Detection-image pixel → nearest input-image pixel, pixel centres matched (as the map restore does).

    Whole pixel indices, like comfyui_controlnet_aux's keypoints: renderers that truncate
    ``normalised × size`` then land on exactly this pixel.
    """
    return [
        None
        if point is None
        else (
            float(min(max(round((point[0] + 0.5) / scale_x - 0.5), 0), width - 1)),
            float(min(max(round((point[1] + 0.5) / scale_y - 0.5), 0), height - 1)),
        )
        for point in points
    ]


class OpenPoseDetector:
    """``OpenPoseDetector.from_folder(models_dir).detect(image)`` → one POSE_KEYPOINT frame."""

    def __init__(
        self,
        body_model: BodyPoseModel,
        hand_model: HandPoseModel | None = None,
        settings: OpenPoseSettings | None = None,
        face_model: FacePoseModel | None = None,
    ) -> None:
        self.body_model = body_model.eval()
        self.hand_model = hand_model.eval() if hand_model is not None else None
        self.face_model = face_model.eval() if face_model is not None else None
        self.settings = settings or OpenPoseSettings()
        self._models_dir: str | None = None

    @classmethod
    def from_files(
        cls, body_path: str | Path, hand_path: str | Path | None = None, face_path: str | Path | None = None
    ) -> "OpenPoseDetector":
        return cls(
            load_body_model(body_path),
            load_hand_model(hand_path) if hand_path is not None else None,
            face_model=load_face_model(face_path) if face_path is not None else None,
        )

    @classmethod
    def from_folder(cls, models_dir: str | Path) -> "OpenPoseDetector":
        """Body model required; the hand model is loaded if present (needed only for ``include_hands``),
        the face model when ``include_face`` first asks for it. A file added later is picked up then."""
        body = resolve_weight_file(models_dir, BODY_WEIGHT_FILE, annotator=ANNOTATOR, source=WEIGHT_SOURCE)
        hand = Path(models_dir) / HAND_WEIGHT_FILE
        detector = cls.from_files(body, hand if hand.is_file() else None)
        detector._models_dir = str(models_dir)
        return detector

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "OpenPoseDetector":
        for model in (self.body_model, self.hand_model, self.face_model):
            if model is not None:
                model.to(device=device, dtype=dtype)
        return self

    def _require(self, attribute: str, file_name: str, load: Any) -> None:
        """Load the optional ``attribute`` model from the weights folder, or name the missing file."""
        if getattr(self, attribute) is not None:
            return
        if self._models_dir is not None and (Path(self._models_dir) / file_name).is_file():
            parameter = next(self.body_model.parameters())
            model = load(Path(self._models_dir) / file_name).to(device=parameter.device, dtype=parameter.dtype)
            setattr(self, attribute, model)
            return
        raise MissingWeightsError(
            file_name, self._models_dir or "the annotator models folder", annotator=ANNOTATOR, source=WEIGHT_SOURCE
        )

    def _run(self, model: torch.nn.Module, tensor: torch.Tensor) -> Any:
        parameter = next(model.parameters())
        return model(tensor.to(device=parameter.device, dtype=parameter.dtype))

    # ------------------------------------------------------------------ public API

    def detect(
        self, image: Any, *, resolution: int = 512, include_hands: bool = True, include_face: bool = False
    ) -> dict:
        """Poses in one image (H×W×C uint8 or float [0, 1]; RGB, RGBA or gray) as a POSE_KEYPOINT frame."""
        return self.detect_batch(
            to_uint8_rgb(image)[None], resolution=resolution, include_hands=include_hands, include_face=include_face
        )[0]

    def detect_batch(
        self, images: Any, *, resolution: int = 512, include_hands: bool = True, include_face: bool = False
    ) -> list[dict]:
        """One frame per image; the body network runs once over the whole batch."""
        batch = to_batch_uint8(images)
        if include_hands:
            self._require("hand_model", HAND_WEIGHT_FILE, load_hand_model)
        if include_face:
            self._require("face_model", FACE_WEIGHT_FILE, load_face_model)
        height, width = batch.shape[1:3]
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        content_h, content_w = fit.scaled_size
        frames_bgr = [np.ascontiguousarray(frame[:, :, ::-1]) for frame in padded]  # the networks take BGR
        people_per_frame = self._detect_bodies([frame[:content_h, :content_w] for frame in frames_bgr])

        scale_y, scale_x = fit.scale
        to_input = partial(detection_to_input, scale_x=scale_x, scale_y=scale_y, width=width, height=height)
        contents = [frame[:content_h, :content_w] for frame in frames_bgr]
        if include_face:
            faces_per_frame = self._detect_faces(contents, people_per_frame)
        else:
            faces_per_frame = [[None] * len(people) for people in people_per_frame]
        results = []
        for content, people, faces in zip(contents, people_per_frame, faces_per_frame):
            hands = self._detect_hands(content, people) if include_hands else [(None, None)] * len(people)
            encoded = []
            for body, (left, right), face in zip(people, hands, faces):
                encoded.append(
                    {
                        "pose_keypoints_2d": encode_keypoints(to_input(body), width, height),
                        "face_keypoints_2d": encode_keypoints(to_input(face), width, height) if face else None,
                        "hand_left_keypoints_2d": encode_keypoints(to_input(left), width, height) if left else None,
                        "hand_right_keypoints_2d": encode_keypoints(to_input(right), width, height) if right else None,
                    }
                )
            results.append({"people": encoded, "canvas_height": int(height), "canvas_width": int(width)})
        return results

    def __call__(
        self,
        images: Any,
        *,
        resolution: int = 512,
        include_hands: bool = True,
        include_face: bool = False,
        draw_body: bool = True,
        draw_hands: bool = True,
        draw_face: bool = True,
    ) -> tuple[np.ndarray, list[dict]]:
        """Rendered maps (B×H×W×3 uint8, input size) and the POSE_KEYPOINT frames."""
        frames = self.detect_batch(images, resolution=resolution, include_hands=include_hands, include_face=include_face)
        maps = np.stack(
            [render_pose(frame, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face) for frame in frames]
        )
        return maps, frames

    # ------------------------------------------------------------------ stages

    @torch.inference_mode()
    def _detect_bodies(self, frames_bgr: list[np.ndarray]) -> list[list[list[Point | None]]]:
        """People per frame, in pixels of ``frames_bgr`` (the detection images, padding already cropped).

        The body network sees each image at ``body_scale × body_box_size / image height``, the
        image's own height as in the reference: the padding to a multiple of 64 must not count,
        or people in portrait images reach the network up to ~10 % smaller than they should.
        """
        settings = self.settings
        stride = self.body_model.config.stride
        size = frames_bgr[0].shape[:2]
        scale = settings.body_scale * settings.body_box_size / size[0]
        net_h = max(stride, int(round(size[0] * scale)))
        net_w = max(stride, int(round(size[1] * scale)))
        channels = self.body_model.config.heatmap_channels
        people_per_frame = []
        # Chunks bound memory: the upsampled maps are 57 float channels at the detection size.
        for start in range(0, len(frames_bgr), max(1, settings.batch_size)):
            chunk = frames_bgr[start : start + max(1, settings.batch_size)]
            tensor, valid = _network_input(chunk, net_h, net_w, settings.pad_value, stride)
            pafs, heatmaps = self._run(self.body_model, tensor)
            maps = _outputs_to_grid(torch.cat([heatmaps, pafs], dim=1), stride, valid, size)
            for frame_maps in maps.permute(0, 2, 3, 1).cpu().numpy():
                people = decode_bodies(frame_maps[:, :, :channels], frame_maps[:, :, channels:], settings.body)
                people_per_frame.append(
                    [[None if peak is None else (float(peak.x), float(peak.y)) for peak in person] for person in people]
                )
        return people_per_frame

    @torch.inference_mode()
    def _detect_hands(
        self, image_bgr: np.ndarray, people: list[list[Point | None]]
    ) -> list[tuple[list[Point | None] | None, list[Point | None] | None]]:
        """(left, right) hand keypoints per person, in ``image_bgr`` pixels; crops of all people batched."""
        assert self.hand_model is not None
        settings = self.settings
        boxes: list[tuple[int, HandBox]] = [
            (person_index, box)
            for person_index, body in enumerate(people)
            for box in hand_boxes(body, image_bgr.shape[0], image_bgr.shape[1], settings.hand)
        ]
        results: list[list[Any]] = [[None, None] for _ in people]
        if not boxes:
            return [tuple(pair) for pair in results]  # type: ignore[misc]
        crops = [
            cv2.GaussianBlur(image_bgr[box.y : box.y + box.size, box.x : box.x + box.size], (0, 0), settings.hand_blur_sigma)
            for _, box in boxes
        ]
        heat_size = settings.hand.heatmap_size
        stride = self.hand_model.config.stride
        average = torch.zeros(len(crops), self.hand_model.config.heatmap_channels, heat_size, heat_size)
        for scale in settings.hand_scales:
            side = max(stride, int(round(scale * settings.hand_box_size)))
            tensor, valid = _network_input(crops, side, side, settings.pad_value, stride)
            heatmaps = self._run(self.hand_model, tensor)
            average += _outputs_to_grid(heatmaps, stride, valid, (heat_size, heat_size)).cpu() / len(settings.hand_scales)
        average_np = average.permute(0, 2, 3, 1).numpy()
        for (person_index, box), crop, heat in zip(boxes, crops, average_np):
            peaks = hand_peaks(heat, crop.shape[0], crop.shape[1], settings.hand)
            points = [None if peak is None else (float(peak[0] + box.x), float(peak[1] + box.y)) for peak in peaks]
            results[person_index][0 if box.is_left else 1] = points
        return [tuple(pair) for pair in results]  # type: ignore[misc]

    @torch.inference_mode()
    def _detect_faces(
        self, images_bgr: list[np.ndarray], people_per_frame: list[list[list[Point | None]]]
    ) -> list[list[list[Point | None] | None]]:
        """70 face keypoints (or None) per person per frame, in pixels of that frame's ``images_bgr``.

        The crops of all people of all frames go through the network together, ``batch_size`` at a time.
        """
        assert self.face_model is not None
        config = self.settings.face
        results: list[list[list[Point | None] | None]] = [[None] * len(people) for people in people_per_frame]
        jobs = []  # (frame, person, box, crop)
        for frame_index, (image, people) in enumerate(zip(images_bgr, people_per_frame)):
            for person_index, body in enumerate(people):
                box = face_box(body, image.shape[0], image.shape[1], config)
                if box is not None:
                    crop = image[box.y : box.y + box.size, box.x : box.x + box.size]
                    jobs.append((frame_index, person_index, box, crop))
        side, stride, step = config.input_size, self.face_model.config.stride, max(1, self.settings.batch_size)
        for start in range(0, len(jobs), step):
            chunk = jobs[start : start + step]
            tensor, _ = _network_input([crop for *_, crop in chunk], side, side, self.settings.pad_value, stride)
            heatmaps = self._run(self.face_model, tensor).float()
            for (frame_index, person_index, box, crop), maps in zip(chunk, heatmaps):
                # Straight from the stride-8 grid to the crop's pixels (bilinear, pixel centres matched).
                resized = F.interpolate(maps[None], size=crop.shape[:2], mode="bilinear", align_corners=False)[0]
                peaks = face_peaks(resized.permute(1, 2, 0).cpu().numpy(), config)
                results[frame_index][person_index] = [
                    None if peak is None else (float(peak[0] + box.x), float(peak[1] + box.y)) for peak in peaks
                ]
        return results
