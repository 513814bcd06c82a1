"""Annotator throughput: a whole batch in one call vs a naive one-image-at-a-time loop.

    python -m bench.bench_annotators [--size 512] [--batch 16] [--device cpu|cuda] [--repeats 3] [--threads N] [--only a,b]

(from the repository root, so `annotators` is importable).

Prints frames per second for canny, lines, pose render, depth (Depth Anything V2 small) and the line
and edge networks (line art, anime line art, M-LSD, PiDiNet soft edge and scribble, TEED, HED
scribble), the networks with random weights of the published architectures: speed does not
depend on the weight values.
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


def compare(batched: Callable[[], object], naive: Callable[[], object], frames: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` frames per second of both, runs interleaved so load drift hits both alike."""
    batched(), naive()  # warm-up: imports, thread pool, kernels
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
    parser.add_argument("--only", default=",".join(["canny", "lines", "pose", "depth", *LINE_NETWORKS]),
                        help="comma-separated subset to run")
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

    def report(name: str, batched: Callable[[], object], naive: Callable[[], object], repeats: int) -> None:
        fast, slow = compare(batched, naive, args.batch, repeats)
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
