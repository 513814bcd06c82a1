"""Content shuffle: warp the image along a smooth random flow field (seeded, deterministic)."""
from __future__ import annotations

import cv2
import numpy as np

from .common import fit_to_resolution, map_frames, to_batch_uint8


def _smooth_noise(height: int, width: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in [0, 1] that varies over about ``cell`` pixels: a coarse random grid, cubic-upsampled."""
    grid = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    noise = cv2.resize(grid, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-6)


def shuffle_flow(height: int, width: int, *, seed: int, flow_scale: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The sampling maps ``(map_x, map_y)`` (float32 ``H×W``) for :func:`cv2.remap`, from ``seed``."""
    rng = np.random.default_rng(int(seed))
    cell = max(1, int(flow_scale))
    map_x = _smooth_noise(height, width, cell, rng) * (width - 1)
    map_y = _smooth_noise(height, width, cell, rng) * (height - 1)
    return map_x, map_y


def content_shuffle(
    images: np.ndarray, *, resolution: int = 512, seed: int = 0, flow_scale: int = 256
) -> np.ndarray:
    """Shuffled image, ``B×H×W×3`` uint8. The same seed gives the same result; every frame of a batch
    gets the same flow, so video frames stay consistent with each other."""
    batch = to_batch_uint8(images)
    padded, fit = fit_to_resolution(batch, resolution)
    map_x, map_y = shuffle_flow(padded.shape[1], padded.shape[2], seed=seed, flow_scale=flow_scale)
    shuffled = map_frames(
        lambda frame: cv2.remap(frame, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT),
        padded,
    )
    return fit.restore(shuffled)
