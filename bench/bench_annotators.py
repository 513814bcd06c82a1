"""Annotator throughput: a whole batch in one call vs a naive one-image-at-a-time loop.

    python -m bench.bench_annotators [--size 512] [--batch 16] [--device cpu|cuda] [--repeats 3] [--threads N] [--only a,b]

(from the repository root, so `annotators` is importable).

Prints frames per second for canny, lines, pose render, depth (Depth Anything V2 small) and the line
and edge networks (line art, anime line art, M-LSD, PiDiNet soft edge and scribble, TEED, HED
scribble), the networks with random weights of the published architectures: speed does not
depend on the weight values. The depth/normal networks (MiDaS, ZoeDepth, NormalBAE, Depth
Anything V2 base/large, LeReS) run the same way with ``--only midas,zoe,normalbae,dav2b,dav2l,leres``.
The pose/face annotators: openpose_face (body + face networks, random weights, one
stand-in person per frame so the face network runs), dwpose (the published ONNX files from
``--models-dir`` when there, else tiny stand-in ONNX models: pre/post-processing only) and
mediapipe_face (its bundled model; with controlnet_aux installed, also its per-image annotator) and
seg_ufade20k (UniFormer-S UperNet, random weights).
The naive loop calls the same annotator once per frame, as a per-image preprocessor node does
(for pose render: parse + render one frame per call).
An annotator whose module is missing is skipped with a note. Input: the bundled astronaut photo
resized to SIZE×SIZE, repeated with small shifts so frames differ.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from annotators import canny, lines
from annotators.common import to_uint8_rgb

SAMPLE = Path(__file__).resolve().parents[1] / "annotators" / "samples" / "astronaut.png"


def video_frames(size: int, batch: int) -> np.ndarray:
    import cv2
    from PIL import Image

    photo = to_uint8_rgb(np.asarray(Image.open(SAMPLE).convert("RGB")))
    photo = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
    return np.stack([np.roll(photo, shift=(index * 3, index * 2), axis=(0, 1)) for index in range(batch)])


def pose_frames(size: int, batch: int) -> list[dict]:
    """Synthetic POSE_KEYPOINT frames: two people with body, hands and face, moving a little per frame."""
    rng = np.random.default_rng(0)
    frames = []
    for index in range(batch):
        people = []
        for person in range(2):
            centre = np.array([size * (0.3 + 0.4 * person) + index, size * 0.5])

            def points(count: int, spread: float) -> list[float]:
                xy = centre + rng.normal(0, spread, (count, 2))
                return np.concatenate([np.clip(xy, 0, size - 1), np.ones((count, 1))], axis=1).ravel().tolist()

            people.append({
                "pose_keypoints_2d": points(18, size * 0.12),
                "hand_left_keypoints_2d": points(21, size * 0.02),
                "hand_right_keypoints_2d": points(21, size * 0.02),
                "face_keypoints_2d": points(70, size * 0.015),
            })
        frames.append({"people": people, "canvas_height": size, "canvas_width": size})
    return frames


def best_seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(
    batched: Callable[[], object], naive: Callable[[], object], frames: int, repeats: int,
    warmup: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """Best-of-``repeats`` frames per second of both, runs interleaved so load drift hits both alike.

    ``warmup`` (default: one run of each) loads imports, thread pools and kernels first."""
    if warmup is None:
        batched(), naive()
    else:
        warmup()
    fast = slow = math.inf
    for _ in range(repeats):
        fast = min(fast, best_seconds(batched))
        slow = min(slow, best_seconds(naive))
    return frames / fast, frames / slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="torch device for depth (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(["canny", "lines", "pose", "depth", *LINE_NETWORKS, "openpose_face",
                                                   "dwpose", "mediapipe_face", "seg_ufade20k"]),
                        help="comma-separated subset to run; depth/normal networks: " + ",".join(DEPTH_NETWORKS))
    parser.add_argument("--models-dir", default=None, help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (dwpose)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    batch = video_frames(args.size, args.batch)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"annotator throughput, {args.size}×{args.size}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"device {args.device} ({device_name})")
    print(f"{'annotator':<16}{'batched fps':>12}{'naive fps':>12}{'speed-up':>10}")

    def report(name: str, batched: Callable[[], object], naive: Callable[[], object], repeats: int,
               warmup: Callable[[], object] | None = None) -> None:
        fast, slow = compare(batched, naive, args.batch, repeats, warmup)
        digits = 1 if min(fast, slow) >= 1 else 3  # slow networks on a CPU: keep their figures readable
        print(f"{name:<16}{fast:>12.{digits}f}{slow:>12.{digits}f}{fast / slow:>9.2f}×", flush=True)

    resolution = args.size
    chosen = set(args.only.split(","))
    if "canny" in chosen:
        report("canny", lambda: canny(batch, resolution=resolution),
               lambda: [canny(frame, resolution=resolution) for frame in batch], args.repeats)
    if "lines" in chosen:
        report("lines (lsd)", lambda: lines(batch, resolution=resolution),
               lambda: [lines(frame, resolution=resolution) for frame in batch], args.repeats)

    if "pose" in chosen:
        bench_pose_render(args, report)
    if "depth" in chosen:
        bench_depth(args, batch, report)
    for name in DEPTH_NETWORKS:
        if name in chosen:
            bench_network(name, args, batch, report)
    # --- pose and face annotators of issue 11 ---
    if "openpose_face" in chosen:
        bench_openpose_face(args, batch, report)
    if "dwpose" in chosen:
        bench_dwpose(args, batch, report)
    if "mediapipe_face" in chosen:
        bench_mediapipe_face(args, batch, report)
    if "seg_ufade20k" in chosen:
        bench_uniformer(args, batch, report)
    bench_line_networks(args, batch, report, chosen)


def bench_pose_render(args: argparse.Namespace, report: Callable) -> None:
    try:
        import annotators.openpose  # noqa: F401  (only to know the module is there)
    except ImportError as error:
        print(f"pose render     skipped: {error}")
        return
    from annotators.registry import run_annotator

    poses = pose_frames(args.size, args.batch)
    report("pose render", lambda: run_annotator("pose_render", poses),
           lambda: [run_annotator("pose_render", [frame]) for frame in poses], args.repeats)


def bench_depth(args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    try:
        from annotators.depth_anything_v2 import DepthAnythingV2
    except ImportError as error:
        print(f"depth           skipped: {error}")
        return
    depth = DepthAnythingV2.random(encoder="vits", seed=0).to(args.device)
    repeats = max(1, args.repeats if args.device != "cpu" else 1)  # ~minutes per pass on a small CPU
    report("depth (DAv2-S)", lambda: depth(batch, resolution=518),
           lambda: [depth(frame[None], resolution=518) for frame in batch], repeats)


# Depth and normal networks of the published sizes with random weights: name → (label, detector factory, resolution).
DEPTH_NETWORKS = {
    "midas": ("MiDaS DPT-Hybrid", "annotators.midas:MidasDetector", {}, 512),
    "zoe": ("ZoeDepth (ZoeD_N)", "annotators.zoe:ZoeDetector", {}, 512),
    "normalbae": ("NormalBAE", "annotators.normalbae:NormalBaeDetector", {}, 512),
    "dav2b": ("DAv2 base", "annotators.depth_anything_v2:DepthAnythingV2", {"encoder": "vitb"}, 518),
    "dav2l": ("DAv2 large", "annotators.depth_anything_v2:DepthAnythingV2", {"encoder": "vitl"}, 518),
    "leres": ("LeReS", "annotators.leres:LeresDetector", {}, 512),
}


def bench_network(name: str, args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    import importlib

    label, target, kwargs, resolution = DEPTH_NETWORKS[name]
    module_name, class_name = target.split(":")
    try:
        detector_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        print(f"{label:<16}skipped: {error}")
        return
    detector = detector_class.random(seed=0, **kwargs).to(args.device)
    repeats = max(1, args.repeats if args.device != "cpu" else 1)  # minutes per pass on a small CPU
    # Warm up on two frames only: one pass over the batch takes minutes on a small CPU.
    report(label[:16], lambda: detector(batch, resolution=resolution),
           lambda: [detector(frame[None], resolution=resolution) for frame in batch], repeats,
           warmup=lambda: detector(batch[:2], resolution=resolution))

# --- pose and face annotators of issue 11 ---


def bench_openpose_face(args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    """Body + face networks with random weights. Random weights find no people, so every frame gets
    one stand-in person (nose, eyes, ears) after the body network has run: the face network then runs
    once per frame, as it does on a real portrait."""
    import torch

    from annotators.openpose import BodyPoseModel, FacePoseModel, OpenPoseDetector

    class OnePersonPerFrame(OpenPoseDetector):
        def _detect_bodies(self, frames_bgr):  # type: ignore[override]
            super()._detect_bodies(frames_bgr)  # the body network's real cost
            height, width = frames_bgr[0].shape[:2]
            person: list = [None] * 18
            nose = (width * 0.5, height * 0.3)
            person[0] = nose
            person[14], person[15] = (nose[0] - width * 0.05, nose[1] - height * 0.04), (nose[0] + width * 0.05, nose[1] - height * 0.04)
            person[16], person[17] = (nose[0] - width * 0.1, nose[1]), (nose[0] + width * 0.1, nose[1])
            return [[list(person)] for _ in frames_bgr]

    torch.manual_seed(0)
    detector = OnePersonPerFrame(BodyPoseModel(), face_model=FacePoseModel()).to(args.device)
    options = dict(resolution=args.size, include_hands=False, include_face=True)
    repeats = max(1, args.repeats if args.device != "cpu" else 1)
    report("openpose_face", lambda: detector(batch, **options), lambda: [detector(frame[None], **options) for frame in batch], repeats)


def bench_dwpose(args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    try:
        from annotators.dwpose import DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE, DWPoseDetector
        from annotators.dwpose.checkpoint import import_onnxruntime

        import_onnxruntime()
    except ImportError as error:
        print(f"dwpose          skipped: {error}")
        return
    folder = Path(args.models_dir) if args.models_dir else None
    label = "dwpose"
    if folder is None or not all((folder / name).is_file() for name in (DETECTOR_WEIGHT_FILE, POSE_WEIGHT_FILE)):
        # The ONNX files are opaque graphs: without them there is no architecture to fill with random
        # weights. Tiny stand-ins (tests/onnx_models.py) time the pre/post-processing alone.
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from onnx_models import ANCHORS, constant_detector, dot_pose_model, raw_anchor

        folder = Path(tempfile.mkdtemp(prefix="dwpose_bench_"))
        raw = np.zeros((ANCHORS, 85), np.float32)
        for cell in (3, 9, 15):  # three people per frame, so the pose stage has crops to batch
            raw_anchor(raw, 32, cell, 10, (0.5, 0.5, 1.5, 2.3), 0.9, {0: 0.9})
        constant_detector(folder / DETECTOR_WEIGHT_FILE, raw, batch="batch")
        dot_pose_model(folder / POSE_WEIGHT_FILE)
        label = "dwpose (stand-in)"
    detector = DWPoseDetector.from_folder(folder).to(args.device)
    report(label, lambda: detector(batch, resolution=args.size),
           lambda: [detector(frame[None], resolution=args.size) for frame in batch], args.repeats)


def bench_mediapipe_face(args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    from annotators.common import MissingDependencyError
    from annotators.mediapipe_face import MediapipeFaceDetector, import_face_mesh
    from annotators.registry import run_annotator

    try:
        import_face_mesh()
    except MissingDependencyError as error:
        print(f"mediapipe_face  skipped: {error}")
        return
    detector = MediapipeFaceDetector()
    report("mediapipe_face", lambda: detector(batch, resolution=args.size),
           lambda: [run_annotator("mediapipe_face", frame, resolution=args.size) for frame in batch], args.repeats)
    try:  # controlnet_aux's own annotator, one image per call (it builds a face-mesh graph each time)
        import importlib.util

        spec = importlib.util.find_spec("controlnet_aux")
        if spec is None:
            raise ImportError("controlnet_aux is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / "mediapipe_face" / "mediapipe_face_common.py"
        module_spec = importlib.util.spec_from_file_location("aux_mediapipe_face_common", path)
        reference = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(reference)
    except ImportError as error:
        print(f"mediapipe_face (controlnet_aux) skipped: {error}")
        return
    report("mp_face vs aux", lambda: detector(batch, resolution=args.size),
           lambda: [reference.generate_annotation(frame, 1, 0.5) for frame in batch], args.repeats)


def bench_uniformer(args: argparse.Namespace, batch: np.ndarray, report: Callable) -> None:
    import torch

    from annotators.uniformer import UniFormerSegmenter, UniFormerSegmentor

    torch.manual_seed(0)
    segmenter = UniFormerSegmenter(UniFormerSegmentor()).to(args.device)
    repeats = max(1, args.repeats if args.device != "cpu" else 1)  # minutes per pass on a small CPU
    report("seg_ufade20k", lambda: segmenter(batch, resolution=args.size),
           lambda: [segmenter(frame[None], resolution=args.size) for frame in batch], repeats)

def _line_network(name: str):
    """A random-weight detector of the published shape and the options it runs with."""
    if name == "lineart":
        from annotators.lineart import LineartDetector, LineartGenerator
        return LineartDetector(LineartGenerator().eval()), {}
    if name == "lineart_anime":
        from annotators.lineart_anime import AnimeLineartUNet, LineartAnimeDetector
        return LineartAnimeDetector(AnimeLineartUNet().eval()), {}
    if name == "mlsd":
        from annotators.mlsd import MLSDDetector, MLSDModel
        return MLSDDetector(MLSDModel().eval()), {}
    if name in ("pidinet", "pidinet_scribble"):
        from annotators.pidinet import PiDiNetDetector, PiDiNetModel
        return PiDiNetDetector(PiDiNetModel().eval()), {"scribble": name == "pidinet_scribble"}
    if name == "teed":
        from annotators.teed import TEEDDetector, TEEDModel
        return TEEDDetector(TEEDModel().eval()), {}
    from annotators.hed import HEDDetector, HEDModel
    return HEDDetector(HEDModel().eval()), {}


# Line and edge networks (random weights of the published shapes; speed does not depend on the values).
LINE_NETWORKS = ("lineart", "lineart_anime", "mlsd", "pidinet", "pidinet_scribble", "teed", "hed_scribble")


def bench_line_networks(args: argparse.Namespace, batch: np.ndarray, report: Callable, chosen: set[str]) -> None:
    import torch

    for name in LINE_NETWORKS:
        if name not in chosen:
            continue
        torch.manual_seed(0)
        detector, options = _line_network(name)
        detector.to(args.device)
        run = detector.scribble if name == "hed_scribble" else detector
        repeats = max(1, args.repeats if args.device != "cpu" else 1)  # seconds per frame on a small CPU
        report(name, lambda: run(batch, resolution=args.size, **options),
               lambda: [run(frame[None], resolution=args.size, **options) for frame in batch], repeats)


if __name__ == "__main__":
    main()
