"""NormalBAE surface normals (``scannet.pt``), the ControlNet 1.1 normalbae annotator."""
from .checkpoint import WEIGHT_FILE, config_from_state_dict, load_normalbae
from .detector import NormalBaeDetector, normal_to_rgb
from .model import NormalBaeConfig, NormalBaeModel

__all__ = [
    "NormalBaeConfig",
    "NormalBaeDetector",
    "NormalBaeModel",
    "WEIGHT_FILE",
    "config_from_state_dict",
    "load_normalbae",
    "normal_to_rgb",
]
