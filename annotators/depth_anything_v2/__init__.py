"""Depth Anything V2 (small ``depth_anything_v2_vits.pth``; vitb / vitl files load too)."""
from .checkpoint import WEIGHT_FILE, load_depth_anything_v2
from .detector import DepthAnythingV2, normalise_per_image
from .model import DepthAnythingV2Config, DepthAnythingV2Model

__all__ = [
    "DepthAnythingV2",
    "DepthAnythingV2Config",
    "DepthAnythingV2Model",
    "WEIGHT_FILE",
    "load_depth_anything_v2",
    "normalise_per_image",
]
