"""LeReS and LeReS++ depth maps over image batches, aligned with the input.

As controlnet_aux's ``LeresDetector`` (ControlNet 1.1 depth_leres / depth_leres++): the short side
goes to ``resolution`` (512). The network sees the image as the reference feeds it: channels
reversed to BGR and ImageNet-normalised **without** dividing by 255 (``ToTensor`` leaves float arrays
unscaled); the published maps were made that way, so it is kept. The depth is min-max normalised,
quantised like the reference (16 bits, then 8), optionally thresholded (``thr_a``: the nearest
``thr_a`` % become white; ``thr_b``: after inverting, the farthest ``thr_b`` % become black) and
inverted, so near = bright.

LeReS runs on whole batches (frames padded at the bottom/right to a multiple of 64; controlnet_aux
stretches them instead). LeReS++ (``boost=True``) runs frame by frame, since every frame gets its own
resolutions and patches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..common import FitToResolution, fit_to_resolution, to_batch_uint8
from ..common.checkpoint import SingleModelDetector, resolve_weight_file
from .boost import boosted_depth, merge_with
from .checkpoint import ANNOTATOR, MERGE_WEIGHT_FILE, WEIGHT_FILE, WEIGHT_SOURCE, load_leres, load_merge_unet
from .model import LeresConfig, LeresModel, MergeConfig, MergeUNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BATCH_SIZE = 4


def network_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 RGB → B×3×H×W: BGR, (x − mean) / std with x in 0..255 (the reference's input)."""
    bgr = images_uint8.flip(-1).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN, device=bgr.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=bgr.device).view(1, 3, 1, 1)
    return (bgr - mean) / std


def depth_to_map(depth: np.ndarray, thr_a: float = 0.0, thr_b: float = 0.0) -> np.ndarray:
    """One depth map (far = large) → uint8-valued map (0..255 floats), near = bright, as the reference."""
    low, high = float(depth.min()), float(depth.max())
    if high - low > np.finfo("float").eps:
        quantised = np.floor(65535.0 * (depth - low) / (high - low))  # astype(uint16) truncates
    else:
        quantised = np.zeros(depth.shape)
    levels = np.clip(np.rint(quantised * (255.0 / 65535.0)), 0, 255)  # convertScaleAbs rounds
    if thr_a != 0:
        levels = np.where(levels > thr_a / 100 * 255, levels, 0)
    levels = 255 - levels
    if thr_b != 0:
        levels = np.where(levels > thr_b / 100 * 255, levels, 0)
    return levels.astype(np.float32)


class LeresDetector(SingleModelDetector):
    """``LeresDetector.from_folder(models_dir)(images, boost=...)`` → B×H×W float32 in [0, 1], near = bright.

    The merge network (``latest_net_G.pth``) is loaded only when present; ``boost=True`` needs it.
    """

    weight_file = WEIGHT_FILE
    annotator = ANNOTATOR
    weight_source = WEIGHT_SOURCE
    model: LeresModel

    def __init__(self, model: LeresModel, merge: MergeUNet | None = None) -> None:
        super().__init__(model)
        self.merge = merge.eval() if merge is not None else None
        self._folder: Path | None = None

    @classmethod
    def load_model(cls, path: str | Path) -> LeresModel:
        return load_leres(path)

    @classmethod
    def from_folder(cls, models_dir: str | Path, file_name: str | None = None) -> "LeresDetector":
        detector = super().from_folder(models_dir, file_name)
        detector._folder = Path(models_dir)
        return detector

    @classmethod
    def random(cls, seed: int = 0, config: LeresConfig | None = None, merge: MergeConfig | None = None) -> "LeresDetector":
        """Random-weight detector of the published shapes (benchmarks and tests; meaningless output)."""
        generator = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            detector = cls(LeresModel(config).eval(), MergeUNet(merge).eval())
        finally:
            torch.random.set_rng_state(generator)
        return detector

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "LeresDetector":
        super().to(device, dtype)
        if self.merge is not None:
            self.merge.to(device=device, dtype=dtype)
        return self

    def merge_network(self) -> MergeUNet:
        """The LeReS++ merge U-Net, loaded from ``latest_net_G.pth`` next to ``res101.pth`` on first use."""
        if self.merge is None:
            if self._folder is None:
                raise FileNotFoundError(f"{ANNOTATOR}: boost needs the merge network ({MERGE_WEIGHT_FILE})")
            path = resolve_weight_file(self._folder, MERGE_WEIGHT_FILE, annotator=ANNOTATOR, source=WEIGHT_SOURCE)
            self.merge = load_merge_unet(path).to(device=self.device, dtype=self.dtype).eval()
        return self.merge

    def estimate(self, rgb: np.ndarray, size: int) -> np.ndarray:
        """The reference ``estimateleres`` for one H×W×3 uint8 frame at a square ``size``: depth at H×W."""
        resized = cv2.resize(rgb, (size, size))
        tensor = torch.from_numpy(resized[None]).to(self.device)
        with torch.inference_mode():
            depth = self.model(network_input(tensor).to(self.dtype))[0].float().cpu().numpy()
        return cv2.resize(depth, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC)

    def depth(self, images: Any, *, resolution: int = 512, boost: bool = False,
              batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, FitToResolution]:
        """Raw depth at detection size (padding cropped) and the fit that maps it back."""
        batch = to_batch_uint8(images)
        padded, fit = fit_to_resolution(batch, resolution, multiple=64)
        height, width = fit.scaled_size
        if boost:
            merge = self.merge_network()
            frames = padded[:, :height, :width]
            depth = np.stack([
                boosted_depth(frame, self.estimate, merge_with(merge), merge.config.size, max(height, width))
                for frame in frames
            ]).astype(np.float32)
            return depth, fit
        dtype = self.dtype
        with torch.inference_mode():
            depth = self.forward_in_chunks(padded, lambda chunk: self.model(network_input(chunk).to(dtype)), batch_size)
        return depth[:, :height, :width], fit

    def __call__(self, images: Any, *, resolution: int = 512, boost: bool = False, thr_a: float = 0.0,
                 thr_b: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        depth, fit = self.depth(images, resolution=resolution, boost=boost, batch_size=batch_size)
        maps = np.stack([depth_to_map(frame, thr_a, thr_b) for frame in depth]) / 255.0
        restore = FitToResolution(fit.original_size, fit.scaled_size, fit.scaled_size)
        return np.clip(restore(maps[..., None].astype(np.float32), interpolation="linear")[..., 0], 0.0, 1.0)
