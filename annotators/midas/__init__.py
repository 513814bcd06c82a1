"""MiDaS v3.0 DPT-Hybrid depth (``dpt_hybrid-midas-501f0c75.pt``) and the ControlNet 1.0 normal map."""
from .checkpoint import WEIGHT_FILE, config_from_state_dict, load_midas
from .detector import MidasDetector, midas_input, normals_from_depth
from .model import MidasConfig, MidasDPTModel

__all__ = [
    "MidasConfig",
    "MidasDPTModel",
    "MidasDetector",
    "WEIGHT_FILE",
    "config_from_state_dict",
    "load_midas",
    "midas_input",
    "normals_from_depth",
]
