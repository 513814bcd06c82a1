"""Adapters from the registry's calling convention to the neural annotators (OpenPose, Depth Anything
V2, HED, MiDaS, ZoeDepth, NormalBAE, LeReS, DWPose, MediaPipe face, UniFormer, line art, M-LSD, PiDiNet,
TEED). Their packages are imported only here and only when first run, and loaded detectors are
cached per (detector, weights folder, device) so a batch of video frames loads weights once.

A detector runs wherever its torch modules are. A caller that manages device memory itself (the
ComfyUI nodes hand the modules to the host's model manager) gets the CPU-loaded detector with
:func:`detector_for` and the modules to place with :func:`torch_modules`, then runs the annotator
with ``device=None``; the same cached detector is used, on whatever device the modules are then.
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


def load_detector(
    module_name: str, class_name: str, models_dir: str | None, device: Any = None, file_name: str | None = None
) -> Any:
    """``module.Class.from_folder(models_dir[, file_name])``, moved to ``device`` when given, cached."""
    folder = str(Path(models_dir or default_models_dir()).expanduser().resolve())
    key = (f"{module_name}.{class_name}:{file_name or ''}", folder, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            loader = getattr(_neural_module(module_name), class_name)
            detector = loader.from_folder(folder, file_name) if file_name else loader.from_folder(folder)
            if device is not None and hasattr(detector, "to"):
                detector = detector.to(device) or detector
            _CACHE[key] = detector
        return _CACHE[key]


# Annotator name -> (package, detector class, weight file when not the class's default) of the torch
# detector it runs. Annotators sharing a detector share its cache entry (and, in the nodes, its place
# in the host's memory manager). ONNX (dwpose) and MediaPipe detectors have no torch modules to hand over.
DETECTORS: dict[str, tuple[str, str, str | None]] = {
    "openpose": ("openpose", "OpenPoseDetector", None),
    "openpose_face": ("openpose", "OpenPoseDetector", None),
    "openpose_full": ("openpose", "OpenPoseDetector", None),
    "depth_anything_v2": ("depth_anything_v2", "DepthAnythingV2", None),
    "depth_anything_v2_vitb": ("depth_anything_v2", "DepthAnythingV2", "depth_anything_v2_vitb.pth"),
    "depth_anything_v2_vitl": ("depth_anything_v2", "DepthAnythingV2", "depth_anything_v2_vitl.pth"),
    "hed": ("hed", "HEDDetector", None),
    "depth_midas": ("midas", "MidasDetector", None),
    "normal_midas": ("midas", "MidasDetector", None),
    "depth_zoe": ("zoe", "ZoeDetector", None),
    "normal_bae": ("normalbae", "NormalBaeDetector", None),
    "depth_leres": ("leres", "LeresDetector", None),
    "depth_leres++": ("leres", "LeresDetector", None),
    "seg_ufade20k": ("uniformer", "UniFormerSegmenter", None),
    "scribble_hed": ("hed", "HEDDetector", None),
    "lineart_realistic": ("lineart", "LineartDetector", None),
    "lineart_coarse": ("lineart", "LineartCoarseDetector", None),
    "lineart_anime": ("lineart_anime", "LineartAnimeDetector", None),
    "mlsd": ("mlsd", "MLSDDetector", None),
    "softedge_pidinet": ("pidinet", "PiDiNetDetector", None),
    "scribble_pidinet": ("pidinet", "PiDiNetDetector", None),
    "teed": ("teed", "TEEDDetector", None),
}


def detector_for(annotator: str, models_dir: str | None, device: Any = None) -> Any:
    """The cached detector ``annotator`` runs (loaded on the CPU when ``device`` is None)."""
    module_name, class_name, file_name = DETECTORS[annotator]
    return load_detector(module_name, class_name, models_dir, device, file_name)


def torch_modules(detector: Any) -> list[Any]:
    """The torch modules a detector runs (for a memory manager to place): every ``nn.Module`` attribute."""
    from torch import nn

    return [value for value in vars(detector).values() if isinstance(value, nn.Module)]


def clear_detector_cache() -> None:
    """Drop every cached detector (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _openpose(
    images: Any, *, resolution: int, models_dir: str | None, device: Any, include_hands: bool, include_face: bool,
    draw_body: bool, draw_hands: bool, draw_face: bool,
) -> Any:
    from .registry import AnnotatorResult

    module = _neural_module("openpose")
    batch = to_batch_uint8(images)
    detector = detector_for("openpose", models_dir, device)
    frames = detector.detect_batch(batch, resolution=resolution, include_hands=include_hands, include_face=include_face)
    maps = np.stack(
        [module.render_pose(frame, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face) for frame in frames]
    )
    return AnnotatorResult(maps, frames)


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
    return _openpose(
        images, resolution=resolution, models_dir=models_dir, device=device, include_hands=include_hands,
        include_face=False, draw_body=draw_body, draw_hands=draw_hands, draw_face=False,
    )


def openpose_face(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    draw_body: bool = True, draw_face: bool = True,
) -> Any:
    """OpenPose body and face keypoints (controlnet_aux's ``openpose_face``), rendered, with POSE_KEYPOINT."""
    return _openpose(
        images, resolution=resolution, models_dir=models_dir, device=device, include_hands=False,
        include_face=True, draw_body=draw_body, draw_hands=False, draw_face=draw_face,
    )


def openpose_full(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True,
) -> Any:
    """OpenPose body, hand and face keypoints (controlnet_aux's ``openpose_full``), rendered, with POSE_KEYPOINT."""
    return _openpose(
        images, resolution=resolution, models_dir=models_dir, device=device, include_hands=True,
        include_face=True, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face,
    )


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
    images: Any, *, resolution: int = 518, models_dir: str | None = None, device: Any = None, encoder: str = "vits"
) -> np.ndarray:
    """Relative depth, near = bright, as a gray ``B×H×W×3`` uint8 map at the input size.

    ``encoder`` picks the published file: vits (small), vitb (base) or vitl (large)."""
    batch = to_batch_uint8(images)
    detector = detector_for("depth_anything_v2" if encoder == "vits" else f"depth_anything_v2_{encoder}", models_dir,
                            device)
    return _gray_map(detector(batch, resolution=resolution))


def depth_anything_v2_vitb(images: Any, **kwargs: Any) -> np.ndarray:
    return depth_anything_v2(images, encoder="vitb", **kwargs)


def depth_anything_v2_vitl(images: Any, **kwargs: Any) -> np.ndarray:
    return depth_anything_v2(images, encoder="vitl", **kwargs)


def _gray_map(values: Any) -> np.ndarray:
    """B×H×W floats in [0, 1] → gray ``B×H×W×3`` uint8 (rounded to nearest)."""
    return gray_to_rgb(_to_uint8(values))


def _to_uint8(values: Any) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def depth_midas(images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None) -> np.ndarray:
    """MiDaS DPT-Hybrid relative depth, near = bright, gray ``B×H×W×3`` uint8 at the input size."""
    detector = detector_for("depth_midas", models_dir, device)
    return _gray_map(detector(to_batch_uint8(images), resolution=resolution))


def normal_midas(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    a: float = 2 * np.pi, bg_threshold: float = 0.1,
) -> np.ndarray:
    """ControlNet 1.0 normal map from MiDaS depth, ``B×H×W×3`` uint8 at the input size."""
    detector = detector_for("normal_midas", models_dir, device)
    return _to_uint8(detector.normals(to_batch_uint8(images), resolution=resolution, a=a, bg_threshold=bg_threshold))


def depth_zoe(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, gamma_corrected: bool = False
) -> np.ndarray:
    """ZoeDepth map (percentile-normalised metric depth, near = bright), gray ``B×H×W×3`` uint8."""
    detector = detector_for("depth_zoe", models_dir, device)
    return _gray_map(detector(to_batch_uint8(images), resolution=resolution, gamma_corrected=gamma_corrected))


def normal_bae(images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None) -> np.ndarray:
    """NormalBAE surface normals (ControlNet 1.1 normalbae), ``B×H×W×3`` uint8 at the input size."""
    detector = detector_for("normal_bae", models_dir, device)
    return _to_uint8(detector(to_batch_uint8(images), resolution=resolution))


def hed(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """HED soft edges as a gray ``B×H×W×3`` uint8 map at the input size (``scribble``: binary strokes)."""
    batch = to_batch_uint8(images)
    detector = detector_for("hed", models_dir, device)
    if scribble:
        return gray_to_rgb(detector.scribble(batch, resolution=resolution, safe=safe))
    return _gray_map(detector(batch, resolution=resolution, safe=safe))


def depth_leres(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    thr_a: float = 0.0, thr_b: float = 0.0, boost: bool = False,
) -> np.ndarray:
    """LeReS depth (near = bright), gray ``B×H×W×3`` uint8; ``boost`` runs LeReS++ (needs latest_net_G.pth)."""
    detector = detector_for("depth_leres", models_dir, device)
    return _gray_map(detector(to_batch_uint8(images), resolution=resolution, boost=boost, thr_a=thr_a, thr_b=thr_b))


def depth_leres_boost(images: Any, **kwargs: Any) -> np.ndarray:
    return depth_leres(images, boost=True, **kwargs)


def dwpose(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True,
) -> Any:
    """DWPose body, hand and face keypoints, rendered like OpenPose; returns POSE_KEYPOINT frames too."""
    from .registry import AnnotatorResult

    detector = load_detector("dwpose", "DWPoseDetector", models_dir, device)
    maps, frames = detector(
        to_batch_uint8(images), resolution=resolution, draw_body=draw_body, draw_hands=draw_hands, draw_face=draw_face
    )
    return AnnotatorResult(maps, frames)


_MEDIAPIPE_FACE: Any = None


def mediapipe_face(images: Any, *, resolution: int = 512, max_faces: int = 1, min_confidence: float = 0.5) -> np.ndarray:
    """MediaPipe face meshes drawn as the face ControlNet's maps (needs the optional mediapipe package)."""
    global _MEDIAPIPE_FACE
    with _CACHE_LOCK:
        if _MEDIAPIPE_FACE is None:
            _MEDIAPIPE_FACE = _neural_module("mediapipe_face").MediapipeFaceDetector()
        detector = _MEDIAPIPE_FACE
    return detector(to_batch_uint8(images), resolution=resolution, max_faces=max_faces, min_confidence=min_confidence)


def seg_ufade20k(images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None) -> np.ndarray:
    """UniFormer ADE20K segmentation drawn with the ADE20K palette, ``B×H×W×3`` uint8 at the input size."""
    detector = detector_for("seg_ufade20k", models_dir, device)
    return detector(to_batch_uint8(images), resolution=resolution)


# Line and edge annotators (issue 11). Their detectors return B×H×W uint8 maps at the input size.


def _line_map(annotator: str, images: Any, models_dir: str | None, device: Any, **options: Any) -> np.ndarray:
    batch = to_batch_uint8(images)
    return gray_to_rgb(detector_for(annotator, models_dir, device)(batch, **options))


def lineart(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, coarse: bool = False
) -> np.ndarray:
    """Line art, white lines on black: ``sk_model.pth`` (realistic) or ``sk_model2.pth`` (``coarse``)."""
    return _line_map("lineart_coarse" if coarse else "lineart_realistic", images, models_dir, device,
                     resolution=resolution)


def lineart_anime(images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None) -> np.ndarray:
    """Anime line art (``netG.pth``), white lines on black."""
    return _line_map("lineart_anime", images, models_dir, device, resolution=resolution)


def mlsd(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None,
    score_threshold: float = 0.1, distance_threshold: float = 0.1,
) -> np.ndarray:
    """M-LSD straight lines, white on black."""
    return _line_map(
        "mlsd", images, models_dir, device, resolution=resolution,
        score_threshold=score_threshold, distance_threshold=distance_threshold,
    )


def pidinet(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """PiDiNet soft edges (gray) or, with ``scribble``, binary strokes; white on black."""
    return _line_map("softedge_pidinet", images, models_dir, device, resolution=resolution, safe=safe,
                     scribble=scribble)


def teed(
    images: Any, *, resolution: int = 512, models_dir: str | None = None, device: Any = None, safe_steps: int = 2
) -> np.ndarray:
    """TEED soft edges, white on black."""
    return _line_map("teed", images, models_dir, device, resolution=resolution, safe_steps=safe_steps)
