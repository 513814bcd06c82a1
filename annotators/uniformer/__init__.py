"""UniFormer ADE20K semantic segmentation (``upernet_global_small.pth``), drawn with the ADE20K palette."""
from .checkpoint import WEIGHT_FILE, load_uniformer
from .detector import UniFormerSegmenter
from .model import UniFormerConfig, UniFormerSegmentor

__all__ = ["WEIGHT_FILE", "UniFormerConfig", "UniFormerSegmenter", "UniFormerSegmentor", "load_uniformer"]
