"""Input normalisation and the detect-resolution round trip shared by every annotator.

Alignment convention
--------------------
Pixel ``(x, y)`` means the pixel whose centre sits at ``(x + 0.5, y + 0.5)`` in continuous image
coordinates (the convention OpenCV's ``resize`` uses). :func:`fit_to_resolution` scales the whole
image by one factor per axis and pads only at the **bottom and right**, so the top-left corner never
moves. :meth:`FitToResolution.restore` crops the padding away and resizes the remaining area back
to exactly the input's ``H×W``. A feature at ``(x, y)`` in the input is therefore at ``(x, y)`` in
the returned control map (up to the blur that resampling brings), for any size, odd ones included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import AnnotatorInputError

# Float images are expected in [0, 1]; allow a little overshoot from upstream arithmetic.
_FLOAT_RANGE_TOLERANCE = 0.01

_INTERPOLATIONS = {
    # INTER_NEAREST_EXACT samples pixel centres; plain INTER_NEAREST is shifted by half a pixel.
    "nearest": cv2.INTER_NEAREST_EXACT,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


def as_numpy(image: Any, what: str = "image") -> np.ndarray:
    """Any array-like as numpy, values unchanged (half floats widened to float32).

    Accepts numpy arrays, torch tensors and PIL images without importing torch or PIL itself.
    """
    if image is None:
        raise AnnotatorInputError(f"{what}: expected an image array, found None")
    if isinstance(image, np.ndarray):
        return image
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor
        tensor = image.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    if hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "getbands"):  # PIL
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise AnnotatorInputError(
                f"{what}: expected an 8-bit image, found a PIL image in mode {image.mode!r} "
                "(16-bit or 32-bit); convert it to 8-bit RGB first"
            )
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        if image.mode == "LA":
            image = image.convert("RGBA")
        return np.asarray(image)
    try:
        return np.asarray(image)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise AnnotatorInputError(f"{what}: expected an image array, found {type(image).__name__}") from exc


def to_unit_float(array: np.ndarray, what: str, *, allow_uint16: bool = False) -> np.ndarray:
    """Masks and depth maps as float32 in [0, 1]: bool, uint8 (/255), uint16 (/65535, if allowed)
    or floats already in [0, 1]; anything else, NaN/inf or out-of-range floats raise."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16 and allow_uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype.kind != "f":
        accepted = "bool, uint8, uint16 or float" if allow_uint16 else "bool, uint8 or float"
        raise AnnotatorInputError(f"{what}: expected {accepted} values, found dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise AnnotatorInputError(f"{what}: expected finite values, found NaN/inf")
    values = array.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if low < -_FLOAT_RANGE_TOLERANCE or high > 1.0 + _FLOAT_RANGE_TOLERANCE:
        raise AnnotatorInputError(f"{what}: expected floats in [0, 1], found range [{low:.4g}, {high:.4g}]")
    return values


def _channels_to_uint8_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """Core conversion for ``...×H×W×C`` arrays (C already made explicit): dtype check, RGBA, gray."""
    if array.dtype == np.uint16 or array.dtype == np.int16:
        raise AnnotatorInputError(
            f"{what}: expected an 8-bit image (uint8) or floats in [0, 1], found 16-bit data ({array.dtype}); "
            "convert the 16-bit PNG to 8-bit first"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise AnnotatorInputError(f"{what}: expected finite values, found {bad} NaN/inf value(s)")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_RANGE_TOLERANCE or high > 1.0 + _FLOAT_RANGE_TOLERANCE:
            raise AnnotatorInputError(
                f"{what}: expected float values in [0, 1], found range [{low:.4g}, {high:.4g}]"
                + (" (looks like 0..255 floats: divide by 255)" if high > 1.5 else "")
            )
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise AnnotatorInputError(
            f"{what}: expected uint8 or float values in [0, 1], found dtype {array.dtype}"
        )

    channels = array.shape[-1]
    if channels == 3:
        return np.ascontiguousarray(array)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=-1))
    if channels == 4:
        # Composite over white, as the original ControlNet annotators do: transparent areas often
        # hold arbitrary colours that would otherwise turn into spurious edges.
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        rgb = array[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    raise AnnotatorInputError(  # pragma: no cover - callers check channel counts first
        f"{what}: expected 1, 3 or 4 channels, found {channels}"
    )


def _check_spatial(height: int, width: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise AnnotatorInputError(f"{what}: expected a non-empty image, found size {height}×{width} (H×W)")


def to_uint8_rgb(image: Any, *, what: str = "image") -> np.ndarray:
    """Return one image as a contiguous ``H×W×3`` uint8 RGB array.

    Accepts uint8 or float ``[0, 1]`` data (numpy, torch or PIL), gray ``H×W`` / ``H×W×1``,
    RGB and RGBA (composited over white). Raises :class:`AnnotatorInputError` for an empty or
    0×0 image, NaN/inf values, 16-bit data and channel counts other than 1, 3 or 4.
    """
    array = as_numpy(image, what)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]  # a ComfyUI batch of one
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise AnnotatorInputError(
            f"{what}: expected an H×W or H×W×C image, found an array of shape {tuple(array.shape)}"
        )
    _check_spatial(array.shape[0], array.shape[1], what)
    if array.shape[2] not in (1, 3, 4):
        raise AnnotatorInputError(
            f"{what}: expected 1, 3 or 4 channels last (H×W×C), found shape {tuple(array.shape)}"
        )
    return _channels_to_uint8_rgb(array, what)


def to_batch_uint8(images: Any, *, what: str = "images") -> np.ndarray:
    """Return a batch as ``B×H×W×3`` uint8.

    ``images`` is a ComfyUI-style ``B×H×W×C`` float tensor/array, a single image (``H×W`` or
    ``H×W×C``), or a sequence of same-sized images. The batch is converted in one vectorised pass.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise AnnotatorInputError(f"{what}: expected at least one image, found an empty list")
        frames = [to_uint8_rgb(item, what=f"{what}[{index}]") for index, item in enumerate(images)]
        sizes = {frame.shape for frame in frames}
        if len(sizes) > 1:
            raise AnnotatorInputError(f"{what}: expected images of one size, found sizes {sorted(sizes)}")
        return np.stack(frames)
    array = as_numpy(images, what)
    if array.ndim in (2, 3):
        return to_uint8_rgb(array, what=what)[None]
    if array.ndim != 4:
        raise AnnotatorInputError(
            f"{what}: expected a B×H×W×C batch or one image, found an array of shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0:
        raise AnnotatorInputError(f"{what}: expected at least one image, found an empty batch (B=0)")
    _check_spatial(array.shape[1], array.shape[2], what)
    if array.shape[3] not in (1, 3, 4):
        raise AnnotatorInputError(
            f"{what}: expected 1, 3 or 4 channels last (B×H×W×C), found shape {tuple(array.shape)}"
        )
    return _channels_to_uint8_rgb(array, what)


# The longest side a detection image may have. An extreme aspect ratio at the usual resolution
# (3×700 at 512 is 512×119467) would otherwise allocate gigabytes before any work starts; 16384 is
# also the largest resolution the registry accepts, so every square input stays possible.
MAX_DETECTION_SIDE = 16384


def scaled_size(height: int, width: int, resolution: int | None) -> tuple[int, int]:
    """Size ``(h, w)`` with the short side at ``resolution`` (aspect kept); unchanged for None/0."""
    if not resolution:
        return height, width
    scale = resolution / min(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def check_detection_size(height: int, width: int, resolution: int | None) -> tuple[int, int]:
    """The detection size of an ``height×width`` input at ``resolution``, or an AnnotatorInputError
    when its long side would exceed :data:`MAX_DETECTION_SIDE`. Computed from the sizes alone,
    before anything is allocated."""
    new_h, new_w = scaled_size(height, width, resolution)
    if max(new_h, new_w) <= MAX_DETECTION_SIDE:
        return new_h, new_w
    short, long = min(height, width), max(height, width)
    largest = MAX_DETECTION_SIDE * short // long  # the largest resolution this aspect ratio allows
    at = f"at resolution {resolution}" if resolution else "at its own size (resolution 0)"
    fix = "crop the image to a less extreme aspect ratio"
    if resolution and largest >= 64:
        fix = f"use a resolution of at most {largest}, or {fix}"
    raise AnnotatorInputError(
        f"image: a {height}×{width} (H×W) image {at} would need a {new_h}×{new_w} detection image; expected a "
        f"long side of at most {MAX_DETECTION_SIDE} px: {fix} (it is {long / short:.1f}:1)"
    )


@dataclass(frozen=True)
class FitToResolution:
    """How an image was resized and padded for detection, and how to undo it.

    ``original_size`` is the caller's ``(H, W)``, ``scaled_size`` the resized content ``(h, w)``
    and ``padded_size`` the detector's input ``(H', W')`` with the padding at bottom/right.
    Calling the object (or :meth:`restore`) maps a detector output back to ``original_size``.
    """

    original_size: tuple[int, int]
    scaled_size: tuple[int, int]
    padded_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Scale factors ``(sy, sx)`` from original to detection pixels."""
        return (
            self.scaled_size[0] / self.original_size[0],
            self.scaled_size[1] / self.original_size[1],
        )

    def restore(self, output: np.ndarray, interpolation: str = "auto") -> np.ndarray:
        """Crop the padding and resize ``H'×W'``, ``H'×W'×C`` or ``B×H'×W'×C`` back to ``H×W``.

        ``interpolation`` ``"auto"`` (default) averages over the covered area when shrinking, so
        one-pixel lines are never skipped, and is linear when enlarging; ``"nearest"`` keeps label
        maps and flat cells exact; ``"linear"``, ``"cubic"`` and ``"area"`` force one method.
        A 2-D input is one gray map; 3-D is one ``H'×W'×C`` map; 4-D is a batch.
        """
        if interpolation not in _INTERPOLATIONS and interpolation != "auto":
            raise AnnotatorInputError(
                f"interpolation: expected 'auto' or one of {sorted(_INTERPOLATIONS)}, found {interpolation!r}"
            )
        output = np.asarray(output)
        spatial_axis = 1 if output.ndim == 4 else 0
        found = output.shape[spatial_axis : spatial_axis + 2]
        if output.ndim not in (2, 3, 4) or tuple(found) != self.padded_size:
            raise AnnotatorInputError(
                f"detector output: expected spatial size {self.padded_size} (H'×W'), "
                f"found array of shape {tuple(output.shape)}"
            )
        h, w = self.scaled_size
        if output.ndim == 4:
            if (h, w) == self.original_size:  # no resize back: one crop for the whole batch
                return np.ascontiguousarray(output[:, :h, :w])
            return np.stack([self._restore_one(frame[:h, :w], interpolation) for frame in output])
        return self._restore_one(output[:h, :w], interpolation)

    __call__ = restore

    def restore_binary(self, output: np.ndarray, *, lines: bool = False) -> np.ndarray:
        """:meth:`restore` for two-level maps (0 = off, anything else = on): exactly {0, 255} uint8.

        Resampling back to the input size blurs the two levels into gray, and ControlNets were
        trained on binary maps, so the resampled map is thresholded again. ``lines=False`` (filled
        regions) keeps a pixel that is at least half covered. ``lines=True`` (edges and strokes a
        pixel or so wide) keeps, when shrinking by ``s``, every pixel covered by at least ``1/(2s)``:
        a one-pixel line spreads ``1/s`` of coverage over the pixels it crosses, so the most-covered
        one always survives and the line is neither dropped nor thickened beyond the pixels it
        touches. When enlarging, a line keeps its scaled width (a 1 px line at 2× is 2 px wide).
        """
        on = (np.asarray(output) > 0).astype(np.uint8)
        on *= 255
        coverage = self.restore(on)  # uint8: 255 = fully covered (resampled in 8 bits: fast)
        if self.scaled_size == self.original_size:
            return coverage  # cropped only, still two levels
        threshold = 0.5
        if lines:
            shrink = max(self.scaled_size[0] / self.original_size[0], self.scaled_size[1] / self.original_size[1])
            threshold = 0.5 / max(1.0, shrink)
        # The resampled coverage is rounded to whole levels: keep what rounds to the threshold or above
        # (an exact half stays on).
        kept = (coverage >= threshold * 255.0 - 0.5).astype(np.uint8)
        kept *= 255
        return kept

    def _restore_one(self, cropped: np.ndarray, interpolation: str) -> np.ndarray:
        height, width = self.original_size
        if cropped.shape[:2] == (height, width):
            return np.ascontiguousarray(cropped)
        if interpolation == "auto":
            shrinking = height * width < cropped.shape[0] * cropped.shape[1]
            interpolation = "area" if shrinking else "linear"
        flag = _INTERPOLATIONS[interpolation]
        if cropped.dtype == np.bool_:
            cropped = cropped.astype(np.uint8)
        elif cropped.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            cropped = cropped.astype(np.float32)  # dtypes cv2.resize cannot take (float16, int64, ...)
        resized = cv2.resize(cropped, (width, height), interpolation=flag)
        if cropped.ndim == 3 and resized.ndim == 2:  # cv2 drops a trailing channel axis of 1
            resized = resized[..., None]
        return resized


def fit_to_resolution(
    image: np.ndarray,
    resolution: int | None,
    multiple: int = 64,
    *,
    pad_mode: str = "edge",
) -> tuple[np.ndarray, FitToResolution]:
    """Resize so the short side is ``resolution``, then pad bottom/right to a multiple of ``multiple``.

    ``image`` is ``H×W``, ``H×W×C`` or a ``B×H×W×C`` batch (all frames share one fit); a 3-D array
    is always one ``H×W×C`` image, so pass a batch of gray maps as ``B×H×W×1``. ``resolution``
    None or 0 keeps the native size (only the padding is added). ``pad_mode`` is ``"edge"``
    (replicate the border, which adds no edges of its own) or ``"zero"``. Returns the detector
    input and a :class:`FitToResolution` whose ``restore`` maps outputs back, exactly aligned.
    When nothing needs resizing or padding the input array itself is returned: don't modify it in place.
    """
    image = np.asarray(image)
    if resolution is not None and (not isinstance(resolution, (int, np.integer)) or resolution < 0):
        raise AnnotatorInputError(f"resolution: expected a positive integer or 0, found {resolution!r}")
    if multiple < 1:
        raise AnnotatorInputError(f"multiple: expected a positive integer, found {multiple!r}")
    if pad_mode not in ("edge", "zero"):
        raise AnnotatorInputError(f"pad_mode: expected 'edge' or 'zero', found {pad_mode!r}")
    batched = image.ndim == 4
    if image.ndim not in (2, 3, 4):
        raise AnnotatorInputError(f"image: expected H×W, H×W×C or B×H×W×C, found shape {tuple(image.shape)}")
    height, width = image.shape[1:3] if batched else image.shape[:2]
    _check_spatial(height, width, "image")

    new_h, new_w = check_detection_size(height, width, resolution)
    pad_h = math.ceil(new_h / multiple) * multiple
    pad_w = math.ceil(new_w / multiple) * multiple
    fit = FitToResolution((height, width), (new_h, new_w), (pad_h, pad_w))

    if fit.padded_size == (height, width):  # already the right size: no per-frame copies
        return image, fit
    if batched and fit.scaled_size == (height, width):  # padding only: one vectorised pad
        return _pad_bottom_right(image, fit, pad_mode, leading=1), fit
    frames: Sequence[np.ndarray] = image if batched else [image]
    prepared = [_resize_and_pad(frame, fit, pad_mode) for frame in frames]
    return (np.stack(prepared) if batched else prepared[0]), fit


def _resize_and_pad(frame: np.ndarray, fit: FitToResolution, pad_mode: str) -> np.ndarray:
    (height, width), (new_h, new_w), (pad_h, pad_w) = fit.original_size, fit.scaled_size, fit.padded_size
    if (new_h, new_w) != (height, width):
        # INTER_AREA when shrinking avoids aliasing; cubic when enlarging keeps edges crisp.
        shrinking = new_h * new_w < height * width
        flag = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
        resized = cv2.resize(frame, (new_w, new_h), interpolation=flag)
        if frame.ndim == 3 and resized.ndim == 2:
            resized = resized[..., None]
    else:
        resized = frame
    if (pad_h, pad_w) == (new_h, new_w):
        return np.ascontiguousarray(resized)
    return _pad_bottom_right(resized, fit, pad_mode, leading=0)


def _pad_bottom_right(array: np.ndarray, fit: FitToResolution, pad_mode: str, leading: int) -> np.ndarray:
    """Pad the two spatial axes (after ``leading`` batch axes) up to ``fit.padded_size``."""
    (new_h, new_w), (pad_h, pad_w) = fit.scaled_size, fit.padded_size
    widths = [(0, 0)] * leading + [(0, pad_h - new_h), (0, pad_w - new_w)]
    widths += [(0, 0)] * (array.ndim - len(widths))
    return np.pad(array, widths, mode="edge" if pad_mode == "edge" else "constant")
