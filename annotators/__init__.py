"""Control-map annotators: pure numpy / OpenCV / torch, never imports ComfyUI."""
from .common import AnnotatorInputError, MissingWeightsError

__all__ = ["AnnotatorInputError", "MissingWeightsError"]
