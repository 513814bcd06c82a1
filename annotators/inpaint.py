"""Inpaint control: the image with masked pixels marked the way inpaint ControlNets expect."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .common import AnnotatorInputError, as_numpy, to_batch_uint8, to_unit_float

# control_v11p_sd15_inpaint was trained with masked pixels set to -1 in a [0, 1] hint (the value
# comfyui_controlnet_aux and the original ControlNet use); xinsir's union/promax models want black.
MASKED_VALUES = {"-1": -1.0, "black": 0.0}


def mask_to_batch(mask: Any, batch_size: int, height: int, width: int) -> np.ndarray:
    """A mask (``H×W``, ``B×H×W`` or ``B×H×W×1``; bool, uint8 or float [0,1]) as ``B×H×W`` bool.

    A mask of a different size is resized (bilinear) to the image; one mask is shared by all frames.
    """
    array = as_numpy(mask, "mask")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] == 0 or array.shape[2] == 0 or array.shape[0] == 0:
        raise AnnotatorInputError(f"mask: expected H×W or B×H×W, found shape {tuple(array.shape)}")
    array = to_unit_float(array, "mask")
    if array.shape[0] not in (1, batch_size):
        raise AnnotatorInputError(f"mask: expected 1 or {batch_size} masks for {batch_size} images, found {array.shape[0]}")
    if array.shape[1:] != (height, width):
        array = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in array])
    return np.broadcast_to(array > 0.5, (batch_size, height, width))


def inpaint(images: np.ndarray, *, mask: Any, masked_value: str = "-1") -> np.ndarray:
    """``B×H×W×3`` float32: the image in [0, 1] with masked pixels set to ``masked_value`` (-1 or 0)."""
    if masked_value not in MASKED_VALUES:
        raise AnnotatorInputError(f"masked_value: expected one of {sorted(MASKED_VALUES)}, found {masked_value!r}")
    if mask is None:
        raise AnnotatorInputError("inpaint: expected a mask (white = repaint), found none")
    batch = to_batch_uint8(images)
    hint = batch.astype(np.float32) / 255.0
    masked = mask_to_batch(mask, *batch.shape[:3])
    hint[masked] = MASKED_VALUES[masked_value]
    return hint
