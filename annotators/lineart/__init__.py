"""Line art from photos: ControlNet 1.1's ``sk_model.pth`` (realistic) and ``sk_model2.pth`` (coarse)."""
from .checkpoint import COARSE_WEIGHT_FILE, WEIGHT_FILE, load_lineart_model
from .detector import LineartCoarseDetector, LineartDetector
from .model import LineartConfig, LineartGenerator

__all__ = [
    "COARSE_WEIGHT_FILE",
    "LineartCoarseDetector",
    "LineartConfig",
    "LineartDetector",
    "LineartGenerator",
    "WEIGHT_FILE",
    "load_lineart_model",
]
