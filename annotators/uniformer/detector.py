"""UniFormer ADE20K segmentation over image batches: class labels and the ADE20K colour map, aligned.

As mmsegmentation's test pipeline runs ``upernet_global_small.pth`` in the ControlNet annotator:
1. The frame is scaled so its short side is ``resolution`` (the detection image); the network then
   sees it rescaled to fit 2048×512 keeping its aspect ratio (the ADE20K test scale: a 512-short-side
   detection image is used as it is), bilinear.
2. Normalised with ImageNet's mean/std after swapping the first and last channels: the annotator
   hands mmsegmentation an RGB image and its pipeline's ``to_rgb`` swaps it, so the published model
   has always been run on BGR-ordered input there; kept for parity with the maps it made.
3. Padded (bottom/right, edge) to a multiple of 32, one batched forward; the stride-4 logits are
   resized (bilinear) to the network input, cropped, resized to the detection image, and the
   arg-max over the 150 classes is the label.
4. Labels return to the input size with nearest-neighbour resampling (labels never blend) and are
   drawn with the ADE20K palette.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..common import fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector
from ..segmentation import render_segmentation
from .checkpoint import ANNOTATOR, WEIGHT_FILE, WEIGHT_SOURCE, load_uniformer
from .model import UniFormerSegmentor

DEFAULT_BATCH_SIZE = 4  # frames per forward; the 150 full-size logit maps are then made one frame at a time
TEST_SCALE = (2048, 512)  # (long side, short side) bound of mmsegmentation's ADE20K test pipeline
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def network_size(height: int, width: int, test_scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv's keep-ratio rescale of ``height×width`` to fit ``test_scale`` (long, short; rounded half up)."""
    scale = min(test_scale[0] / max(height, width), test_scale[1] / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def normalise(images: np.ndarray) -> np.ndarray:
    """``B×H×W×3`` uint8 RGB → ``B×3×H×W`` float32, channels swapped as the reference feeds them."""
    swapped = images[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((swapped - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


class UniFormerSegmenter(SingleModelDetector):
    """``UniFormerSegmenter.from_folder(models_dir)(images)`` → B×H×W×3 uint8 ADE20K colour maps."""

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: UniFormerSegmentor
    test_scale: tuple[int, int] = TEST_SCALE

    @classmethod
    def load_model(cls, path: str | Path) -> UniFormerSegmentor:
        return load_uniformer(path)

    @torch.inference_mode()
    def labels(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """``B×H×W`` uint8 ADE20K class indices (0 = wall … 149 = flag) at the input's size."""
        batch = to_batch_uint8(images)
        detection, fit = fit_to_resolution(batch, resolution, multiple=1)
        height, width = detection.shape[1:3]
        net_h, net_w = network_size(height, width, self.test_scale)
        if (net_h, net_w) != (height, width):
            detection = np.stack([cv2.resize(frame, (net_w, net_h), interpolation=cv2.INTER_LINEAR) for frame in detection])
        stride = self.model.config.stride
        pad_h, pad_w = -(-net_h // stride) * stride - net_h, -(-net_w // stride) * stride - net_w
        padded = np.pad(detection, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        labels = []
        for start in range(0, len(padded), max(1, batch_size)):
            tensor = torch.from_numpy(normalise(padded[start : start + batch_size])).to(self.device, self.dtype)
            for logits in self.model(tensor).float():  # one frame's 150 full-size maps at a time
                logits = F.interpolate(logits[None], size=tensor.shape[2:], mode="bilinear", align_corners=False)
                logits = logits[:, :, :net_h, :net_w]
                if (net_h, net_w) != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                labels.append(logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy())
        return fit.restore(np.stack(labels)[..., None], interpolation="nearest")[..., 0]

    def __call__(self, images: Any, *, resolution: int = 512, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        return render_segmentation(self.labels(images, resolution=resolution, batch_size=batch_size))
