"""ZoeDepth over image batches, aligned with the input.

As controlnet_aux's ``ZoeDetector``: the short side goes to ``resolution`` (512), RGB / 255 goes
through the model's ``infer`` (reflect padding, resize for the network, flip averaging), and the
metric depth becomes a control map by its own percentiles: ``1 − (d − p2) / (p85 − p2)``, so near
is bright, the nearest 2 % and the farthest 15 % saturate. ``gamma_corrected`` raises the map to 2.2.
Unlike controlnet_aux, frames are not stretched to a multiple of 64 first (the model resizes
internally, so there is nothing to pad), and the map is clipped to [0, 1] before the gamma (the
reference takes a fractional power of negative values there, which gives NaN).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_zoe
from .model import ZoeConfig, ZoeDepthModel

# BEiT-L at ~512² holds 1024 tokens × 1024 channels per block; 2 frames (×2 for the flip) stay near 2 GiB.
DEFAULT_BATCH_SIZE = 2


def depth_to_map(depth: np.ndarray, gamma_corrected: bool = False) -> np.ndarray:
    """One metric depth map (far = large) → [0, 1] control map, near = bright, by its 2nd/85th percentiles."""
    near, far = np.percentile(depth, 2), np.percentile(depth, 85)
    if far <= near:
        return np.zeros(depth.shape, np.float32)
    mapped = np.clip(1.0 - (depth - near) / (far - near), 0.0, 1.0)
    return (mapped**2.2 if gamma_corrected else mapped).astype(np.float32)


class ZoeDetector(SingleModelDetector):
    """``ZoeDetector.from_folder(models_dir)(images)`` → B×H×W float32 in [0, 1], near = bright."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: ZoeDepthModel

    @classmethod
    def load_model(cls, path: str | Path) -> ZoeDepthModel:
        return load_zoe(path)

    @classmethod
    def random(cls, seed: int = 0, config: ZoeConfig | None = None) -> "ZoeDetector":
        """Random-weight detector of the published shape (benchmarks and tests; meaningless output)."""
        generator = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = ZoeDepthModel(config)
            with torch.no_grad():
                model.core.core.pretrained.model.cls_token.normal_(0.0, 0.02)
        finally:
            torch.random.set_rng_state(generator)
        return cls(model.eval())

    def metric_depth(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, Any]:
        """Metric depth (metres) at detection size, B×h×w, and the fit that maps it back."""
        batch = to_batch_uint8(images)
        scaled, fit = fit_to_resolution(batch, resolution, multiple=1)
        dtype = self.dtype

        def forward(chunk: torch.Tensor) -> torch.Tensor:
            return self.model.infer((chunk.permute(0, 3, 1, 2).float() / 255.0).to(dtype))[:, 0]

        with torch.inference_mode():
            return self.forward_in_chunks(scaled, forward, batch_size), fit

    def __call__(
        self, images: Any, *, resolution: int = 512, gamma_corrected: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        depth, fit = self.metric_depth(images, resolution=resolution, batch_size=batch_size)
        maps = np.stack([depth_to_map(frame, gamma_corrected) for frame in depth])
        return np.clip(fit.restore(maps[..., None], interpolation="linear")[..., 0], 0.0, 1.0).astype(np.float32)
