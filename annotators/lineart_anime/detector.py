"""Anime line art (ControlNet 1.1 ``lineart_anime``) over image batches.

As controlnet_aux's ``LineartAnimeDetector``: RGB scaled to [-1, 1], the U-Net's tanh output mapped
back to 0..255, truncated to 8 bits and inverted, so the map holds **white lines on black** (the
anime lineart ControlNet's training script feeds ``1 - map``).

The U-Net needs sides that are multiples of 256. controlnet_aux stretches the detection image to
the next multiples of 256 and back; here it is padded at the bottom/right (replicated edge) and
the padding is cropped off, so the aspect ratio is never distorted and the map stays aligned.
The two agree exactly when the detection size already is a multiple of 256 (512×512, 512×768 …).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_lineart_anime_model
from .model import AnimeLineartUNet


class LineartAnimeDetector(SingleModelDetector):
    """``LineartAnimeDetector.from_folder(models_dir)(images)`` → B×H×W uint8, white lines on black."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: AnimeLineartUNet
    # The first and last levels hold 64-128 channels at 1/2 resolution; 4 frames at 512² stay under 1 GiB.
    accelerator_batch_size = 4

    @classmethod
    def load_model(cls, path: str | Path) -> AnimeLineartUNet:
        return load_lineart_anime_model(path)

    def _page_0_255(self, rgb_0_255: torch.Tensor) -> torch.Tensor:
        return self.model(rgb_0_255 / 127.5 - 1.0)[:, 0] * 127.5 + 127.5

    @torch.inference_mode()
    def __call__(self, images: Any, *, resolution: int = 512, batch_size: int | None = None) -> np.ndarray:
        """Line map per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray)."""
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=self.model.config.multiple)
        page = self.forward_batches(padded, self._page_0_255, batch_size)
        lines = 255 - np.clip(page, 0, 255).astype(np.uint8)  # dark-on-white page → white lines on black
        return fit.restore(lines[..., None])[..., 0]
