"""Batch helpers: run per-frame OpenCV work on all cores, and shape helpers for gray maps."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import cv2
import numpy as np

# OpenCV releases the GIL inside its kernels, so a thread pool gives real parallelism per frame.
_MAX_WORKERS = max(1, min(16, os.cpu_count() or 1))


def map_frames(
    function: Callable[[np.ndarray], np.ndarray], frames: Sequence[np.ndarray], *, threads: bool = True
) -> np.ndarray:
    """Apply ``function`` to every frame and stack the results.

    ``threads`` runs frames in parallel threads: right for single-threaded kernels (LSD, Hough,
    numpy reductions). Kernels OpenCV already parallelises inside (Canny, blurs, resize, remap)
    are faster with ``threads=False``: stacking both oversubscribes the cores.
    """
    if len(frames) == 1 or not threads:
        return np.stack([function(frame) for frame in frames])
    with ThreadPoolExecutor(max_workers=min(_MAX_WORKERS, len(frames))) as pool:
        return np.stack(list(pool.map(function, frames)))


def rgb_to_gray(batch: np.ndarray) -> np.ndarray:
    """``...×3`` uint8 RGB to ``...`` uint8 luma (ITU-R BT.601, the weights OpenCV uses), vectorised."""
    # One cvtColor call over the frames stacked as rows: per-pixel ops don't care about frame borders.
    flat = np.ascontiguousarray(batch).reshape(-1, batch.shape[-2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(batch.shape[:-1])


def gray_to_rgb(maps: np.ndarray) -> np.ndarray:
    """``B×H×W`` (or ``B×H×W×1``) single-channel maps to ``B×H×W×3`` by repeating the channel."""
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    return np.ascontiguousarray(np.repeat(maps[..., None], 3, axis=-1))


def normalise_per_image(maps: np.ndarray) -> np.ndarray:
    """Min-max each map of a B×... stack to [0, 1] (a constant map becomes 0), as comfyui_controlnet_aux does."""
    flat = maps.reshape(len(maps), -1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    low = flat.min(axis=1).reshape(shape)
    span = (flat.max(axis=1).reshape(shape) - low).astype(np.float32)
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (maps - low) / safe_span, 0.0).astype(np.float32)
