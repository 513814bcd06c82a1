"""DWPose whole-body annotator (``yolox_l.onnx`` + ``dw-ll_ucoco_384.onnx``, run by onnxruntime).

Output is OpenPose's POSE_KEYPOINT and OpenPose's rendering; see README.md.
"""
from .checkpoint import DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE, load_person_detector, load_pose_model
from .detector import DWPoseDetector

__all__ = ["DETECTOR_WEIGHT_FILE", "POSE_WEIGHT_FILE", "DWPoseDetector", "load_person_detector", "load_pose_model"]
