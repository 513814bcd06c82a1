"""Depth Anything V2 over image batches, aligned pixel for pixel with the input.

Resolution: the ViT needs sides that are multiples of its 14-pixel patch, so where the other
annotators pad to a multiple of 64, this one pads (bottom/right, replicated edge) to a multiple of
14. ``resolution`` is the short side the image is scaled to (518 = 37 patches, the training size;
other values are fine, the positional embeddings are resampled). The padded rows/columns are
cropped after the forward pass and the map is resized back to the input's H×W with the same
mapping every annotator uses, so alignment does not depend on the padding multiple.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import fit_to_resolution, normalise_per_image, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_depth_anything_v2
from .model import DepthAnythingV2Config, DepthAnythingV2Model, normalise_rgb

DEFAULT_BATCH_SIZE = 8


class DepthAnythingV2(SingleModelDetector):
    """``DepthAnythingV2.from_folder(models_dir)(images)`` → B×H×W float32 in [0, 1], near = bright.

    ``from_folder(models_dir, file_name=...)`` also loads the vitb / vitl files.
    """

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: DepthAnythingV2Model

    @classmethod
    def load_model(cls, path: str | Path) -> DepthAnythingV2Model:
        return load_depth_anything_v2(path)

    @classmethod
    def random(cls, encoder: str = "vits", seed: int = 0, config: DepthAnythingV2Config | None = None) -> "DepthAnythingV2":
        """Random-weight detector of the published shape (benchmarks and tests; meaningless output)."""
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = DepthAnythingV2Model(config or DepthAnythingV2Config.preset(encoder))
            with torch.no_grad():  # the token/positional parameters start at zero; give them values
                for parameter in (model.pretrained.cls_token, model.pretrained.pos_embed, model.pretrained.mask_token):
                    parameter.normal_(0.0, 0.02)
                # Lift the last conv so the final ReLU does not zero the whole (random) map.
                model.depth_head.scratch.output_conv2[2].bias.fill_(1.0)
        finally:
            torch.random.set_rng_state(generator_state)
        return cls(model)

    @torch.inference_mode()
    def __call__(self, images: Any, *, resolution: int = 518, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Relative depth per image; ``images`` is B×H×W×C (uint8 or float [0, 1]; RGB, RGBA or gray)."""
        batch = to_batch_uint8(images)
        patch = self.model.config.patch_size
        padded, fit = fit_to_resolution(batch, resolution, multiple=patch)
        dtype = self.dtype
        disparity = self.forward_in_chunks(padded, lambda chunk: self.model(normalise_rgb(chunk).to(dtype)), batch_size)
        # restore() reads a 4-D array as a batch: give the maps a channel axis.
        depth = fit.restore(disparity[..., None], interpolation="linear")[..., 0]
        return normalise_per_image(depth)
