"""TEED soft edges (``5_model.pth``, the file name controlnet_aux's documentation uses)."""
from .checkpoint import WEIGHT_FILE, load_teed_model
from .detector import TEEDDetector
from .model import TEEDModel, smish

__all__ = ["TEEDDetector", "TEEDModel", "WEIGHT_FILE", "load_teed_model", "smish"]
