"""Control-map annotators: pure numpy / OpenCV / torch, never imports ComfyUI.

Every annotator takes a batch (``B×H×W×C``, uint8 or float in [0, 1]) or one image and returns
maps at the input's size, aligned pixel for pixel. Run any of them by name with
:func:`run_annotator` (parameters, defaults and ranges in :data:`REGISTRY`), or call the functions.
The neural annotators (OpenPose, DWPose, MediaPipe face, UniFormer, Depth Anything V2, HED, line art,
M-LSD, PiDiNet, TEED, MiDaS, ZoeDepth, LeReS, NormalBAE) are
imported only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

from .binary import binary
from .canny import canny
from .color_palette import color_palette
from .common import (
    AnnotatorInputError,
    FitToResolution,
    MissingWeightsError,
    fit_to_resolution,
    to_batch_uint8,
    to_uint8_rgb,
)
from .inpaint import inpaint
from .lineart_standard import lineart_standard
from .lines import detect_line_segments, lines
from .normal_from_depth import normal_from_depth
from .registry import REGISTRY, AnnotatorResult, AnnotatorSpec, ParamSpec, annotator_names, get_spec, run_annotator
from .scribble import scribble
from .segmentation import ADE20K_CLASSES, ADE20K_PALETTE, render_segmentation
from .shuffle import content_shuffle
from .tile import blur, tile

# Neural names resolved on first access, so `import annotators` stays light and works without weights.
_LAZY_NEURAL = {
    "OpenPoseDetector": "openpose",
    "render_pose": "openpose",
    "parse_pose_keypoints": "openpose",
    "DepthAnythingV2": "depth_anything_v2",
    "HEDDetector": "hed",
    "DWPoseDetector": "dwpose",
    "MediapipeFaceDetector": "mediapipe_face",
    "UniFormerSegmenter": "uniformer",
    "LineartDetector": "lineart",
    "LineartCoarseDetector": "lineart",
    "LineartAnimeDetector": "lineart_anime",
    "MLSDDetector": "mlsd",
    "PiDiNetDetector": "pidinet",
    "TEEDDetector": "teed",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NEURAL:
        module = importlib.import_module(f".{_LAZY_NEURAL[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "AnnotatorInputError",
    "AnnotatorResult",
    "AnnotatorSpec",
    "FitToResolution",
    "MissingWeightsError",
    "ParamSpec",
    "REGISTRY",
    "annotator_names",
    "binary",
    "blur",
    "canny",
    "color_palette",
    "content_shuffle",
    "detect_line_segments",
    "fit_to_resolution",
    "get_spec",
    "inpaint",
    "lineart_standard",
    "lines",
    "normal_from_depth",
    "render_segmentation",
    "run_annotator",
    "scribble",
    "tile",
    "to_batch_uint8",
    "to_uint8_rgb",
    *_LAZY_NEURAL,
]
