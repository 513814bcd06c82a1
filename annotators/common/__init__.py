"""Shared input handling for all annotators: errors, image normalisation, resolution round trip."""
from .batch import gray_to_rgb, map_frames, normalise_per_image, rgb_to_gray
from .edges import restore_binary, safe_step, scribble_batch, scribble_from_edges, thin_edges, to_uint8_truncated
from .errors import AnnotatorInputError, MissingDependencyError, MissingWeightsError
from .image import FitToResolution, as_numpy, fit_to_resolution, scaled_size, to_batch_uint8, to_uint8_rgb, to_unit_float

__all__ = [
    "AnnotatorInputError",
    "gray_to_rgb",
    "map_frames",
    "normalise_per_image",
    "rgb_to_gray",
    "MissingDependencyError",
    "MissingWeightsError",
    "FitToResolution",
    "as_numpy",
    "fit_to_resolution",
    "scaled_size",
    "to_batch_uint8",
    "to_uint8_rgb",
    "to_unit_float",
    "restore_binary",
    "safe_step",
    "scribble_batch",
    "scribble_from_edges",
    "thin_edges",
    "to_uint8_truncated",
]
