"""MiDaS depth (and the ControlNet 1.0 normal map computed from it) over image batches, aligned.

Pre-processing as controlnet_aux's ``MidasDetector``: the short side goes to ``resolution`` (512),
RGB is scaled to [-1, 1] (``x / 127.5 - 1``) and the network runs at that size (not at its 384
training size). Frames are padded at the bottom/right to a multiple of 64 (controlnet_aux stretches
them to one instead), the padding is cropped off the prediction, and the map goes back to the input's
H×W. Depth is min-max normalised per frame: near = bright.

The normal map is ControlNet 1.0's "normal" (controlnet_aux ``depth_and_normal=True``, the
sd-webui-controlnet ``normal_midas``): Sobel slopes of the raw prediction at detection size, zeroed
where the normalised depth is below ``bg_threshold`` (the background faces the camera), ``a`` as
the z component, normalised and stored as (z, y, x) in (R, G, B).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..common import FitToResolution, fit_to_resolution, normalise_per_image, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_midas
from .model import MidasConfig, MidasDPTModel

# Activations of the ResNet stem are 64×(H/2)×(W/2) floats per frame; 4 frames at 512² stay near 1 GiB.
DEFAULT_BATCH_SIZE = 4
DEFAULT_A = float(np.pi * 2.0)
DEFAULT_BG_THRESHOLD = 0.1


def midas_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 → B×3×H×W float in [-1, 1] (``x / 127.5 - 1``, as controlnet_aux feeds MiDaS)."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def normals_from_depth(depth: np.ndarray, a: float = DEFAULT_A, bg_threshold: float = DEFAULT_BG_THRESHOLD) -> np.ndarray:
    """ControlNet 1.0's normal map of one raw H×W MiDaS prediction: H×W×3 float in [0, 1] (R = z, G = y, B = x)."""
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    low, high = float(depth.min()), float(depth.max())
    relative = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    slope_x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    slope_y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    background = relative < bg_threshold
    slope_x[background] = 0.0
    slope_y[background] = 0.0
    normal = np.stack([slope_x, slope_y, np.full_like(slope_x, a)], axis=2)
    length = np.sqrt(np.sum(normal**2, axis=2, keepdims=True))
    normal = normal / np.where(length > 0, length, 1.0)
    return np.clip(normal[..., ::-1] * 0.5 + 0.5, 0.0, 1.0)


class MidasDetector(SingleModelDetector):
    """``MidasDetector.from_folder(models_dir)(images)`` → B×H×W float32 depth in [0, 1], near = bright."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: MidasDPTModel

    @classmethod
    def load_model(cls, path: str | Path) -> MidasDPTModel:
        return load_midas(path)

    @classmethod
    def random(cls, seed: int = 0, config: MidasConfig | None = None) -> "MidasDetector":
        """Random-weight detector of the published shape (benchmarks and tests; meaningless output)."""
        generator = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = MidasDPTModel(config)
            with torch.no_grad():
                model.pretrained.model.cls_token.normal_(0.0, 0.02)
                model.pretrained.model.pos_embed.normal_(0.0, 0.02)
                model.scratch.output_conv[4].bias.fill_(1.0)  # keep the final ReLU from zeroing the map
        finally:
            torch.random.set_rng_state(generator)
        return cls(model)

    @torch.inference_mode()
    def predict(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, FitToResolution]:
        """Raw network output at detection size with the padding cropped: (B×h×w float32, the fit)."""
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        dtype = self.dtype
        raw = self.forward_in_chunks(padded, lambda chunk: self.model(midas_input(chunk).to(dtype)), batch_size)
        height, width = fit.scaled_size
        return raw[:, :height, :width], fit

    def __call__(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Relative depth per image, B×H×W float32 in [0, 1] at the input size."""
        raw, fit = self.predict(images, resolution=resolution, batch_size=batch_size)
        return normalise_per_image(_restore_cropped(raw[..., None], fit)[..., 0])

    def normals(
        self, images: Any, *, resolution: int = 512, a: float = DEFAULT_A, bg_threshold: float = DEFAULT_BG_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """ControlNet 1.0 normal maps, B×H×W×3 float32 in [0, 1] at the input size."""
        raw, fit = self.predict(images, resolution=resolution, batch_size=batch_size)
        normals = np.stack([normals_from_depth(frame, a, bg_threshold) for frame in raw])
        return _restore_cropped(normals, fit)


def _restore_cropped(maps: np.ndarray, fit: FitToResolution) -> np.ndarray:
    """Maps already cropped to ``fit.scaled_size`` (B×h×w×C) back to the input's H×W (linear)."""
    restore = FitToResolution(fit.original_size, fit.scaled_size, fit.scaled_size)
    return restore(maps.astype(np.float32), interpolation="linear")
