"""Shared input handling for all annotators: errors, image normalisation, resolution round trip."""
from .errors import AnnotatorInputError, MissingWeightsError
from .image import FitToResolution, fit_to_resolution, scaled_size, to_batch_uint8, to_uint8_rgb

__all__ = [
    "AnnotatorInputError",
    "MissingWeightsError",
    "FitToResolution",
    "fit_to_resolution",
    "scaled_size",
    "to_batch_uint8",
    "to_uint8_rgb",
]
