"""HED soft-edge annotator (ControlNet's ``ControlNetHED.pth``)."""
from .checkpoint import WEIGHT_FILE, load_hed_model
from .detector import HEDDetector, safe_step
from .model import HEDConfig, HEDModel

__all__ = ["HEDConfig", "HEDDetector", "HEDModel", "WEIGHT_FILE", "load_hed_model", "safe_step"]
