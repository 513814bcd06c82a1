"""M-LSD straight-line detection (ControlNet 1.1's ``mlsd_large_512_fp32.pth``)."""
from .checkpoint import WEIGHT_FILE, load_mlsd_model
from .decode import decode_segments
from .detector import MLSDDetector, draw_segments_truncated
from .model import MLSDConfig, MLSDModel

__all__ = ["MLSDConfig", "MLSDDetector", "MLSDModel", "WEIGHT_FILE", "decode_segments", "draw_segments_truncated", "load_mlsd_model"]
