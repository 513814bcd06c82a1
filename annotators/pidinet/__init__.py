"""PiDiNet soft edges and scribbles (ControlNet 1.1's ``table5_pidinet.pth``)."""
from .checkpoint import WEIGHT_FILE, load_pidinet_model
from .detector import PiDiNetDetector
from .model import CARV4, PiDiNetConfig, PiDiNetModel, PixelDifferenceConv

__all__ = ["CARV4", "PiDiNetConfig", "PiDiNetDetector", "PiDiNetModel", "PixelDifferenceConv", "WEIGHT_FILE", "load_pidinet_model"]
