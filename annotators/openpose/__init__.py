"""OpenPose body, hand and face annotator, POSE_KEYPOINT parsing and pose rendering (see README.md)."""
from .body_decode import BodyDecodeConfig, decode_bodies
from .body_model import BodyPoseConfig, BodyPoseModel
from .checkpoint import (
    BODY_WEIGHT_FILE,
    FACE_WEIGHT_FILE,
    HAND_WEIGHT_FILE,
    load_body_model,
    load_face_model,
    load_hand_model,
    to_published_layout,
)
from .detector import OpenPoseDetector, OpenPoseSettings
from .face_model import FacePoseConfig, FacePoseModel
from .hand_model import HandPoseConfig, HandPoseModel
from .keypoints import frame_is_normalised, parse_pose_keypoints, validate_frame
from .render import render_pose

__all__ = [
    "BODY_WEIGHT_FILE",
    "FACE_WEIGHT_FILE",
    "HAND_WEIGHT_FILE",
    "BodyDecodeConfig",
    "BodyPoseConfig",
    "BodyPoseModel",
    "FacePoseConfig",
    "FacePoseModel",
    "HandPoseConfig",
    "HandPoseModel",
    "OpenPoseDetector",
    "OpenPoseSettings",
    "decode_bodies",
    "frame_is_normalised",
    "load_body_model",
    "load_face_model",
    "load_hand_model",
    "parse_pose_keypoints",
    "render_pose",
    "to_published_layout",
    "validate_frame",
]
