"""Annotator throughput: a whole batch in one call vs a naive one-image-at-a-time loop.

    python -m bench.bench_annotators [--size 512] [--batch 16] [--device cpu|cuda] [--repeats 3]

(from the repository root, so `annotators` is importable).

Prints frames per second for canny, lines, pose render and depth (Depth Anything V2 small with
random weights of the published architecture: speed does not depend on the weight values); the
depth/normal networks (MiDaS, ZoeDepth, NormalBAE, Depth Anything V2 base/large, LeReS) run the same way
with ``--only midas,zoe,normalbae,dav2b,dav2l,leres``.
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
    parser.add_argument("--only", default="canny,lines,pose,depth", help="comma-separated subset to run; "
                        "depth/normal networks: " + ",".join(DEPTH_NETWORKS))
    args = parser.parse_args()

    import torch

    batch = video_frames(args.size, args.batch)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"annotator throughput, {args.size}×{args.size}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, device {args.device} ({device_name})")
    print(f"{'annotator':<16}{'batched fps':>12}{'naive fps':>12}{'speed-up':>10}")

    def report(name: str, batched: Callable[[], object], naive: Callable[[], object], repeats: int,
               warmup: Callable[[], object] | None = None) -> None:
        fast, slow = compare(batched, naive, args.batch, repeats, warmup)
        print(f"{name:<16}{fast:>12.3g}{slow:>12.3g}{fast / slow:>9.2f}×", flush=True)

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


if __name__ == "__main__":
    main()
