"""Training data: target images, control maps and captions, paired by file name.

Layout (folder names in brackets are accepted aliases; the paper's fill50k uses target/ and source/):

    dataset/
      images/        [target]                  photo_001.png, photo_002.jpg, ...
      conditioning/  [source, control]         photo_001.png, photo_002.png, ...  (same stems)
      captions/                                photo_001.txt, ...  (or images/photo_001.txt beside
                                                the image, or a fill50k-style prompt.json)

Every image needs a control map of the same width and height and a caption (an empty .txt file is
the empty caption). `scan_dataset` checks all of it, decoding every file, before anything is
encoded or written, and names every problem it finds.

Images are resized so their shorter side is the training resolution, then centre-cropped square
(the same geometry for image and control map): target pixels in [-1, 1], control maps in [0, 1].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._core import InputError

IMAGE_FOLDERS = ("images", "target")
CONDITIONING_FOLDERS = ("conditioning", "source", "control")
CAPTION_FOLDER = "captions"
PROMPT_JSON = "prompt.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SHOWN = 8  # names listed per problem in an error message


class DatasetError(InputError):
    """A training dataset that cannot be used: missing folders, unpaired, unreadable or mismatched files."""


@dataclass(frozen=True)
class Example:
    name: str            # the shared file stem
    image: Path          # target image
    conditioning: Path   # control map
    caption: str
    size: tuple[int, int]  # (width, height), equal for image and control map


def _pick_folder(root: Path, names: tuple[str, ...], what: str) -> Path:
    found = [root / n for n in names if (root / n).is_dir()]
    if not found:
        raise DatasetError(f"dataset {root}: no {what} folder; expected a subfolder named "
                           f"{' or '.join(repr(n) for n in names)}")
    if len(found) > 1:
        raise DatasetError(f"dataset {root}: both {found[0].name!r} and {found[1].name!r} exist; keep one {what} folder")
    return found[0]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in by_stem:
                duplicates.append(f"{by_stem[path.stem].name} / {path.name}")
            by_stem[path.stem] = path
    if duplicates:
        raise DatasetError(f"{folder}: several images share a name, so the pairing is ambiguous: "
                           f"{_list(duplicates)}")
    return by_stem


def _list(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _prompt_json_captions(path: Path, images: Path, conditioning: Path) -> dict[str, str]:
    """fill50k's prompt.json: one JSON object per line, {"source": ..., "target": ..., "prompt": ...}."""
    captions: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                target, source, prompt = Path(entry["target"]), Path(entry["source"]), entry["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path} line {number}: expected a JSON object with 'source', 'target' and "
                                   f"'prompt', found {line.strip()[:80]!r} ({exc})") from None
            if target.stem != source.stem:
                raise DatasetError(f"{path} line {number}: target {target} and source {source} have different "
                                   f"names; this dataset pairs files by name")
            captions[target.stem] = str(prompt)
    return captions


def _read_captions(root: Path, images: Path, conditioning: Path, stems: list[str]) -> tuple[dict[str, str], list[str]]:
    """Caption per stem, and the stems that have none."""
    folder = root / CAPTION_FOLDER
    prompt_json = root / PROMPT_JSON
    if prompt_json.is_file():
        if folder.is_dir():
            raise DatasetError(f"dataset {root}: both {PROMPT_JSON} and {CAPTION_FOLDER}/ exist; keep one")
        captions = _prompt_json_captions(prompt_json, images, conditioning)
        return captions, [s for s in stems if s not in captions]
    captions, missing, ambiguous = {}, [], []
    for stem in stems:
        candidates = [p for p in (folder / f"{stem}.txt", images / f"{stem}.txt") if p.is_file()]
        if len(candidates) > 1:
            ambiguous.append(stem)
        elif not candidates:
            missing.append(stem)
        else:
            try:
                captions[stem] = candidates[0].read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise DatasetError(f"caption {candidates[0]} is not readable UTF-8 text: {exc}") from None
    if ambiguous:
        raise DatasetError(f"dataset {root}: captions both in {CAPTION_FOLDER}/ and beside the image for "
                           f"{_list(ambiguous)}; keep one")
    return captions, missing


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """H×W×3 uint8; DatasetError naming the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return np.array(image.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"image {path} is not readable (corrupt, truncated or not an image): {exc}") from None


def scan_dataset(folder: str | os.PathLike) -> list[Example]:
    """Every (image, control map, caption) of `folder`, checked; DatasetError naming each problem."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset {root} is not a folder")
    images = _pick_folder(root, IMAGE_FOLDERS, "image")
    conditioning = _pick_folder(root, CONDITIONING_FOLDERS, "control map")
    image_files, control_files = _images_by_stem(images), _images_by_stem(conditioning)

    problems = []
    no_control = sorted(set(image_files) - set(control_files))
    no_image = sorted(set(control_files) - set(image_files))
    if no_control:
        problems.append(f"{len(no_control)} image(s) in {images.name}/ have no control map of the same name in "
                        f"{conditioning.name}/: {_list(no_control)}")
    if no_image:
        problems.append(f"{len(no_image)} control map(s) in {conditioning.name}/ have no image of the same name in "
                        f"{images.name}/: {_list(no_image)}")
    stems = sorted(set(image_files) & set(control_files))
    captions, no_caption = _read_captions(root, images, conditioning, stems)
    if no_caption:
        problems.append(f"{len(no_caption)} image(s) have no caption ({CAPTION_FOLDER}/NAME.txt, "
                        f"{images.name}/NAME.txt or {PROMPT_JSON}; an empty file means the empty caption): "
                        f"{_list(no_caption)}")
    if problems:
        raise DatasetError(f"dataset {root} is not paired by file name: " + "; ".join(problems))
    if not stems:
        raise DatasetError(f"dataset {root}: no images found in {images.name}/ (expected {', '.join(IMAGE_SUFFIXES)})")

    examples, unreadable, mismatched = [], [], []
    for stem in stems:
        try:
            image_shape = read_image(image_files[stem]).shape
            control_shape = read_image(control_files[stem]).shape
        except DatasetError as exc:
            unreadable.append(str(exc))
            continue
        if image_shape[:2] != control_shape[:2]:
            mismatched.append(f"{stem} (image {image_shape[1]}×{image_shape[0]}, control map "
                              f"{control_shape[1]}×{control_shape[0]})")
            continue
        examples.append(Example(stem, image_files[stem], control_files[stem], captions[stem],
                                (image_shape[1], image_shape[0])))
    if unreadable:
        raise DatasetError(f"dataset {root}: {len(unreadable)} unreadable file(s): " + "; ".join(unreadable[:SHOWN]))
    if mismatched:
        raise DatasetError(f"dataset {root}: {len(mismatched)} image(s) differ in size from their control map "
                           f"(they must be pixel-aligned): {_list(mismatched)}")
    return examples


def resize_square(pixels: np.ndarray, resolution: int, smooth: bool) -> np.ndarray:
    """Shorter side to `resolution` (area filter when shrinking; bicubic, or bilinear for control
    maps, when enlarging), then the centre square."""
    import cv2

    height, width = pixels.shape[:2]
    scale = resolution / min(height, width)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if scale < 1:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC if smooth else cv2.INTER_LINEAR
    if (new_w, new_h) != (width, height):
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    return pixels[top:top + resolution, left:left + resolution]


def load_target(example: Example, resolution: int) -> torch.Tensor:
    """3×R×R float32 in [-1, 1] (the VAE's input range)."""
    pixels = resize_square(read_image(example.image), resolution, smooth=True)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1.0


def load_hint(example: Example, resolution: int) -> torch.Tensor:
    """3×R×R uint8 control map (divide by 255 for the ControlNet's [0, 1] hint)."""
    pixels = resize_square(read_image(example.conditioning), resolution, smooth=False)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


def fingerprint(examples: list[Example]) -> list[list]:
    """What identifies the data for the encoding cache and for resuming: names, files, sizes, mtimes, captions."""
    rows = []
    for example in examples:
        stats = [os.stat(example.image), os.stat(example.conditioning)]
        rows.append([example.name, str(example.image), str(example.conditioning), example.caption,
                     *[(s.st_size, s.st_mtime_ns) for s in stats]])
    return rows
