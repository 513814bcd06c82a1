"""Command line: run any annotator on an image file.

    python -m annotators --list
    python -m annotators TYPE [INPUT] [OUTPUT] [--resolution N] [--param value ...]
    python -m annotators canny photo.png edges.png --low-threshold 50 --high-threshold 150
    python -m annotators lines                      # bundled sample photo -> lines.png
    python -m annotators openpose me.png pose.png --models-dir ~/ComfyUI/models/annotators --pose-json pose.json
    python -m annotators inpaint photo.png hint.png --mask mask.png

With no INPUT a bundled sample photo is used; with no OUTPUT the map goes to ``TYPE.png``.
Nothing is downloaded: neural annotators read their weights from ``--models-dir``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import AnnotatorInputError, MissingDependencyError, MissingWeightsError
from .neural import MODELS_DIR_ENV, default_models_dir
from .registry import (
    INPUT_DEPTH, INPUT_LABELS, INPUT_POSE, SAMPLES_DIR, AnnotatorSpec, ParamSpec, annotator_names, get_spec, run_annotator,
)


def _parse_bool(text: str) -> bool:
    return ParamSpec("value", "bool", False, "").validate(text)


def _add_param_option(parser: argparse.ArgumentParser, spec: ParamSpec) -> None:
    flags = sorted({f"--{spec.name.replace('_', '-')}", f"--{spec.name}"})
    extra: dict[str, Any] = {}
    if spec.kind == "int":
        extra["type"] = int
        metavar = "INT"
    elif spec.kind == "float":
        extra["type"] = float
        metavar = "FLOAT"
    elif spec.kind == "bool":
        extra["type"] = _parse_bool
        metavar = "true|false"
    else:
        extra["choices"] = list(spec.choices)
        metavar = None
    range_text = f" [{spec.minimum}..{spec.maximum}]" if spec.minimum is not None else ""
    parser.add_argument(
        *flags, dest=spec.name, default=None, metavar=metavar,
        help=f"{spec.help}{range_text} (default: {spec.default})", **extra,
    )


def build_parser(spec: AnnotatorSpec | None = None, *, add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m annotators",
        add_help=add_help,
        description="Make a ControlNet control map from an image. Offline: no downloads ever.",
        epilog="Run `python -m annotators --list` for the annotators, `python -m annotators TYPE --help` for their parameters.",
    )
    parser.add_argument("type", nargs="?", help="annotator name (see --list)")
    parser.add_argument("input", nargs="?", help="input image (default: a bundled sample photo)")
    parser.add_argument("output", nargs="?", help="output PNG (default: TYPE.png)")
    parser.add_argument("--list", action="store_true", help="list the annotators and their parameters, then exit")
    parser.add_argument("--resolution", type=int, default=None, help="detection short side in pixels, 64..16384, or 0 for the input's own size (default: the annotator's)")
    parser.add_argument(
        "--models-dir", default=None,
        help=f"folder with neural weight files (default: ${MODELS_DIR_ENV} or ./models/annotators)",
    )
    parser.add_argument("--mask", default=None, help="inpaint: mask image, white = repaint (default: the input's transparent pixels)")
    parser.add_argument("--pose-json", default=None, help="pose annotators (openpose*, dwpose): also write the POSE_KEYPOINT JSON here")
    parser.add_argument("--device", default=None, help="torch device for neural annotators, e.g. cuda (default: the model's)")
    if spec is not None:
        group = parser.add_argument_group(f"{spec.name} parameters")
        for param in spec.params:
            _add_param_option(group, param)
    return parser


def list_annotators() -> str:
    lines = []
    for name in annotator_names():
        spec = get_spec(name)
        weights = f"  [weights: {', '.join(w.file_name for w in spec.weights)}]" if spec.weights else ""
        needs = f"  [needs: {', '.join(spec.requires)}]" if spec.requires else ""
        lines.append(f"{name:<18} {spec.description}{weights}{needs}")
        for param in spec.params:
            choices = f" {{{','.join(param.choices)}}}" if param.choices else ""
            lines.append(f"    --{param.name.replace('_', '-'):<22} default {param.default!s:<8}{choices} {param.help}")
    return "\n".join(lines)


def _read_image_file(path: Path) -> np.ndarray:
    """Pixels as stored: 8-bit stays uint8, 16-bit stays uint16 (the annotator decides if that is ok)."""
    from PIL import Image

    if not path.is_file():
        raise AnnotatorInputError(f"input: expected an image file, found no file at {str(path)!r}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(image).astype(np.uint16 if image.mode.startswith("I;16") else np.int32)
            if image.mode == "P":
                image = image.convert("RGBA")
            if image.mode not in ("L", "LA", "RGB", "RGBA"):
                image = image.convert("RGB")
            return np.asarray(image)
    except OSError as exc:
        raise AnnotatorInputError(f"input: could not read {str(path)!r} as an image ({exc})") from None


def _read_input(spec: AnnotatorSpec, path: Path) -> Any:
    if spec.input_kind == INPUT_POSE:
        if not path.is_file():
            raise AnnotatorInputError(f"input: expected a POSE_KEYPOINT / OpenPose JSON file, found no file at {str(path)!r}")
        return path.read_text(encoding="utf-8")
    pixels = _read_image_file(path)
    if spec.input_kind == INPUT_LABELS:
        return pixels if pixels.ndim == 2 else pixels[..., 0]
    if spec.input_kind == INPUT_DEPTH:
        return pixels
    if pixels.dtype != np.uint8:
        raise AnnotatorInputError(
            f"input: expected an 8-bit image, found a {pixels.dtype.itemsize * 8}-bit image in {str(path)!r}; "
            "convert it to 8-bit first"
        )
    return pixels


def _mask_for(args: argparse.Namespace, pixels: Any) -> Any:
    if args.mask:
        mask = _read_image_file(Path(args.mask))
        return mask[..., 0] if mask.ndim == 3 else mask
    if isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        return pixels[..., -1] < 128  # transparent pixels are the ones to repaint
    raise AnnotatorInputError("inpaint: expected --mask MASK.png or an input with transparent pixels, found neither")


def _write_png(path: Path, maps: np.ndarray) -> None:
    from PIL import Image

    if maps.dtype != np.uint8:  # inpaint hints: -1 (masked) cannot be stored in a PNG; shown black
        maps = np.clip(np.rint(maps * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if maps.shape[0] == 1:
        Image.fromarray(maps[0]).save(path)
        return
    for index, frame in enumerate(maps):
        Image.fromarray(frame).save(path.with_name(f"{path.stem}_{index:04d}{path.suffix}"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # First pass only finds TYPE (no --help yet), so `TYPE --help` can list TYPE's parameters.
    first = build_parser(add_help=False).parse_known_args(argv)[0]
    if first.list:
        print(list_annotators())
        return 0
    if not first.type:
        build_parser().print_help()
        return 2
    try:
        spec = get_spec(first.type)
    except AnnotatorInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(spec).parse_args(argv)
    params = {p.name: getattr(args, p.name) for p in spec.params if getattr(args, p.name) is not None}

    if args.input:
        input_path = Path(args.input)
    elif spec.sample:
        input_path = SAMPLES_DIR / spec.sample
    else:
        print(f"error: {spec.name} needs an INPUT file ({spec.input_kind})", file=sys.stderr)
        return 2
    output_path = Path(args.output or f"{spec.name}.png")
    try:
        inputs = _read_input(spec, input_path)
        mask = _mask_for(args, inputs) if spec.needs_mask else None
        started = time.perf_counter()
        result = run_annotator(
            spec.name, inputs, resolution=args.resolution, models_dir=args.models_dir or default_models_dir(),
            mask=mask, device=args.device, **params,
        )
        elapsed = time.perf_counter() - started
    except (AnnotatorInputError, MissingWeightsError, MissingDependencyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _write_png(output_path, result.images)
    if args.pose_json and result.pose_keypoints is not None:
        Path(args.pose_json).write_text(json.dumps(result.pose_keypoints, indent=1), encoding="utf-8")
    height, width = result.images.shape[1:3]
    print(f"{spec.name}: {input_path} -> {output_path} ({width}×{height}, {elapsed * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
