"""NormalBAE surface normals over image batches, aligned with the input.

As controlnet_aux's ``NormalBaeDetector`` (what ControlNet 1.1 normalbae was trained on): the short
side goes to ``resolution`` (512), RGB / 255 is ImageNet-normalised, and the finest prediction's unit
normal (x, y, z) is mapped to RGB as ``(n + 1) / 2``: red = x, green = y, blue = z (towards the
viewer: flat walls facing the camera are (128, 128, 255)). Frames are padded at the bottom/right to a
multiple of 64 (controlnet_aux stretches them), the padding is cropped off and the map goes back to H×W.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from ..common.dpt import normalise_images
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_normalbae
from .model import IMAGENET_MEAN, IMAGENET_STD, NormalBaeConfig, NormalBaeModel

# Decoder features at stride 2 are 128×(H/2)×(W/2) floats; 4 frames at 512² stay near 1.5 GiB.
DEFAULT_BATCH_SIZE = 4


def normal_to_rgb(normals: torch.Tensor) -> torch.Tensor:
    """B×(3+)×H×W unit normals → B×H×W×3 in [0, 1]: ``(n + 1) / 2`` per channel, clipped."""
    return ((normals[:, :3] + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)


class NormalBaeDetector(SingleModelDetector):
    """``NormalBaeDetector.from_folder(models_dir)(images)`` → B×H×W×3 float32 normal maps in [0, 1]."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: NormalBaeModel

    @classmethod
    def load_model(cls, path: str | Path) -> NormalBaeModel:
        return load_normalbae(path)

    @classmethod
    def random(cls, seed: int = 0, config: NormalBaeConfig | None = None) -> "NormalBaeDetector":
        """Random-weight detector of the published shape (benchmarks and tests; meaningless output)."""
        generator = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = NormalBaeModel(config)
        finally:
            torch.random.set_rng_state(generator)
        return cls(model)

    @torch.inference_mode()
    def __call__(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        dtype = self.dtype

        def forward(chunk: torch.Tensor) -> torch.Tensor:
            return normal_to_rgb(self.model(normalise_images(chunk, IMAGENET_MEAN, IMAGENET_STD).to(dtype)))

        normals = self.forward_in_chunks(padded, forward, batch_size)
        return np.clip(fit.restore(normals, interpolation="linear"), 0.0, 1.0).astype(np.float32)
