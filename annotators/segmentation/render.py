"""Label map → colour map with the ADE20K palette, one table look-up for the whole batch."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..common import AnnotatorInputError, as_numpy
from .palette import ADE20K_PALETTE

IGNORE_LABEL = 255  # the usual "unlabelled" index in segmentation data; drawn black


def labels_to_batch(labels: Any) -> np.ndarray:
    """A label map as ``B×H×W`` int64: integer arrays ``H×W``/``B×H×W``/``…×1``, or float images
    in [0, 1] whose gray value × 255 is the label (a label PNG loaded as an image)."""
    array = as_numpy(labels, "labels")
    if array.ndim >= 3 and array.shape[-1] in (3, 4) and array.ndim in (3, 4):
        channels = array[..., :3]
        if not (channels == channels[..., :1]).all():
            raise AnnotatorInputError(
                "labels: expected a single-channel label map (class index per pixel), found a colour image"
            )
        array = channels[..., 0]
    elif array.ndim >= 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise AnnotatorInputError(f"labels: expected H×W or B×H×W class indices, found shape {tuple(array.shape)}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise AnnotatorInputError("labels: expected finite values, found NaN/inf")
        if array.min() < 0 or array.max() > 1.0:
            raise AnnotatorInputError(
                "labels: float label maps are read as images in [0, 1] (label = value × 255); "
                f"found range [{array.min():.4g}, {array.max():.4g}]. Pass integer class indices instead."
            )
        array = np.rint(array * 255.0)
    elif array.dtype.kind not in "iub":
        raise AnnotatorInputError(f"labels: expected integer class indices, found dtype {array.dtype}")
    return array.astype(np.int64)


def render_segmentation(labels: Any, *, label_offset: int = 0) -> np.ndarray:
    """``B×H×W×3`` uint8 colour map. Class ``i`` is drawn as ``ADE20K_PALETTE[i]``.

    ``label_offset`` 1 reads ADE20K's raw annotation convention (0 = unlabelled, 1..150 = classes);
    0 reads 0..149 as classes. Label 255, and 0 with offset 1, are drawn black.
    """
    if label_offset not in (0, 1):
        raise AnnotatorInputError(f"label_offset: expected 0 or 1, found {label_offset!r}")
    indices = labels_to_batch(labels)
    classes = indices - label_offset
    unlabelled = (indices == IGNORE_LABEL) | (classes < 0)
    bad = ~unlabelled & (classes >= len(ADE20K_PALETTE))
    if bad.any():
        found = np.unique(indices[bad])[:8].tolist()
        raise AnnotatorInputError(
            f"labels: expected class indices {label_offset}..{len(ADE20K_PALETTE) - 1 + label_offset} "
            f"(or {IGNORE_LABEL} for unlabelled), found {found}"
        )
    table = np.zeros((len(ADE20K_PALETTE) + 1, 3), np.uint8)  # last row: black for unlabelled
    table[:-1] = ADE20K_PALETTE
    return table[np.where(unlabelled, len(ADE20K_PALETTE), classes)]
