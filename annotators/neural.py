"""Adapters from the registry's calling convention to the neural annotators (OpenPose, Depth Anything
V2, HED, line art, M-LSD, PiDiNet, TEED). Their packages are imported only here and only when first
run, and loaded detectors are cached per (detector, weights folder, device) so a batch of video
frames loads weights once.
"""
from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .common import AnnotatorInputError, gray_to_rgb, to_batch_uint8

MODELS_DIR_ENV = "ANNOTATORS_MODELS_DIR"

_CACHE: dict[tuple[str, str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def default_models_dir() -> str:
    """Where weight files are looked for when no folder is given: ``$ANNOTATORS_MODELS_DIR``, else
    ``models/annotators`` under the current directory."""
    return os.environ.get(MODELS_DIR_ENV) or str(Path("models") / "annotators")


def _neural_module(name: str) -> Any:
    return importlib.import_module(f".{name}", __package__)


def load_detector(module_name: str, class_name: str, models_dir: str | None, device: Any = None) -> Any:
    """``module.Class.from_folder(models_dir)``, moved to ``device`` when given, cached."""
    folder = str(Path(models_dir or default_models_dir()).expanduser().resolve())
    key = (f"{module_name}.{class_name}", folder, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            detector = getattr(_neural_module(module_name), class_name).from_folder(folder)
            if device is not None and hasattr(detector, "to"):
                detector = detector.to(device) or detector
            _CACHE[key] = detector
        return _CACHE[key]


def clear_detector_cache() -> None:
    """Drop every cached detector (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def openpose(
    images: Any,
    *,
    resolution: int = 512,
    models_dir: str | None = None,
    device: Any = None,
    include_hands: bool = True,
    draw_body: bool = True,
    draw_hands: bool = True,
) -> Any:
    """OpenPose keypoints per frame, rendered; returns an AnnotatorResult with POSE_KEYPOINT frames."""
    from .registry import AnnotatorResult

    module = _neural_module("openpose")
    batch = to_batch_uint8(images)
    detector = load_detector("openpose", "OpenPoseDetector", models_dir, device)
    frames = detector.detect_batch(batch, resolution=resolution, include_hands=include_hands)
    maps = np.stack(
        [module.render_pose(frame, draw_body=draw_body, draw_hands=draw_hands, draw_face=False) for frame in frames]
    )
    return AnnotatorResult(maps, frames)


def pose_render(
    keypoints: Any, *, draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True
) -> Any:
    """Draw POSE_KEYPOINT frames (a list of frame dicts, one frame dict, or OpenPose JSON text)."""
    from .registry import AnnotatorResult

    module = _neural_module("openpose")
    frames = module.parse_pose_keypoints(keypoints)
    sizes = sorted({(frame["canvas_height"], frame["canvas_width"]) for frame in frames})
    if len(sizes) > 1:  # frames of different canvas sizes cannot form one IMAGE batch
        raise AnnotatorInputError(f"pose keypoints: expected frames of one canvas size, found sizes {sizes}")
    # Drawing is mostly Python-level work under the GIL, so a thread pool would not help here.
    maps = np.stack(
        [module.render_pose(frame, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face) for frame in frames]
    )
    return AnnotatorResult(maps, frames)


def depth_anything_v2(
    images: Any, *, resolution: int = 518, models_dir: str | None = None, device: Any = None
) -> np.ndarray:
    """Relative depth, near = bright, as a gray ``B×H×W×3`` uint8 map at the input size."""
    batch = to_batch_uint8(images)
    detector = load_detector("depth_anything_v2", "DepthAnythingV2", models_dir, device)
    depth = np.asarray(detector(batch, resolution=resolution), dtype=np.float32)
    return gray_to_rgb(np.clip(np.rint(depth * 255.0), 0, 255).astype(np.uint8))


def hed(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """HED soft edges as a gray ``B×H×W×3`` uint8 map at the input size (``scribble``: binary strokes)."""
    batch = to_batch_uint8(images)
    detector = load_detector("hed", "HEDDetector", models_dir, device)
    if scribble:
        return gray_to_rgb(detector.scribble(batch, resolution=resolution, safe=safe))
    edges = np.asarray(detector(batch, resolution=resolution, safe=safe), dtype=np.float32)
    return gray_to_rgb(np.clip(np.rint(edges * 255.0), 0, 255).astype(np.uint8))


# Line and edge annotators (issue 11). Their detectors return B×H×W uint8 maps at the input size.


def _line_map(module_name: str, class_name: str, images: Any, models_dir: str | None, device: Any, **options: Any) -> np.ndarray:
    batch = to_batch_uint8(images)
    detector = load_detector(module_name, class_name, models_dir, device)
    return gray_to_rgb(detector(batch, **options))


def lineart(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, coarse: bool = False
) -> np.ndarray:
    """Line art, white lines on black: ``sk_model.pth`` (realistic) or ``sk_model2.pth`` (``coarse``)."""
    detector = "LineartCoarseDetector" if coarse else "LineartDetector"
    return _line_map("lineart", detector, images, models_dir, device, resolution=resolution)


def lineart_anime(images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None) -> np.ndarray:
    """Anime line art (``netG.pth``), white lines on black."""
    return _line_map("lineart_anime", "LineartAnimeDetector", images, models_dir, device, resolution=resolution)


def mlsd(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    score_threshold: float = 0.1, distance_threshold: float = 0.1,
) -> np.ndarray:
    """M-LSD straight lines, white on black."""
    return _line_map(
        "mlsd", "MLSDDetector", images, models_dir, device, resolution=resolution,
        score_threshold=score_threshold, distance_threshold=distance_threshold,
    )


def pidinet(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """PiDiNet soft edges (gray) or, with ``scribble``, binary strokes; white on black."""
    return _line_map("pidinet", "PiDiNetDetector", images, models_dir, device, resolution=resolution, safe=safe, scribble=scribble)


def teed(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe_steps: int = 2
) -> np.ndarray:
    """TEED soft edges, white on black."""
    return _line_map("teed", "TEEDDetector", images, models_dir, device, resolution=resolution, safe_steps=safe_steps)
