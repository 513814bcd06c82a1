"""Surface normals from a depth map (near = bright), drawn as an RGB normal map.

Two colour conventions, by the ControlNet that reads the map (both checked against the reference
code, see annotators/README.md):

- ``normal_bae`` (default): ControlNet 1.1 ``control_v11p_sd15_normalbae``, and normal maps from
  rendering engines in the ScanNet/NYU-v2 colouring: red grows as the surface turns to face the
  **left**, green as it faces **up**, blue as it faces the viewer; flat is ``(128, 128, 255)``.
- ``normal_midas``: ControlNet 1.0 ``control_sd15_normal``. Its app computed the same three
  components from MiDaS depth but gave the network the channels in reverse order: red = towards
  the viewer, green = up, blue = left; flat is ``(255, 128, 128)``.

``invert_x`` / ``invert_y`` flip the left/right and up/down components for models trained with the
other handedness.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .common import AnnotatorInputError, as_numpy, map_frames, to_unit_float

# Convention name -> where the (left, up, front) components go in R, G, B.
NORMAL_CONVENTIONS = {"normal_bae": (0, 1, 2), "normal_midas": (2, 1, 0)}


def depth_to_batch(depth: Any) -> np.ndarray:
    """A depth map (or batch) as ``B×H×W`` float32 in [0, 1].

    Accepts ``H×W``, ``H×W×C``, ``B×H×W`` (C not in 1/3/4) and ``B×H×W×C``; uint8, uint16 (16-bit
    depth PNGs are common) or floats in [0, 1]. Colour channels are averaged.
    """
    array = as_numpy(depth, "depth")
    if array.ndim == 2:
        array = array[None, ..., None]
    elif array.ndim == 3:
        array = array[None] if array.shape[-1] in (1, 3, 4) else array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise AnnotatorInputError(f"depth: expected H×W, B×H×W or B×H×W×C, found shape {tuple(array.shape)}")
    if 0 in array.shape[:3]:
        raise AnnotatorInputError(f"depth: expected a non-empty map, found shape {tuple(array.shape)}")
    values = to_unit_float(array, "depth", allow_uint16=True)
    channels = min(array.shape[-1], 3)  # ignore alpha
    return np.ascontiguousarray(values[..., :channels].mean(axis=-1))


def normal_from_depth(
    depth: Any,
    *,
    strength: float = 1.0,
    blur_sigma: float = 1.0,
    background_threshold: float = 0.0,
    invert_x: bool = False,
    invert_y: bool = False,
    convention: str = "normal_bae",
) -> np.ndarray:
    """Normal map ``B×H×W×3`` uint8 at the depth map's size.

    The depth map is read as a height field ``z = strength · depth · short_side`` (so a full-range
    ramp across a square image tilts 45° at ``strength`` 1, whatever the resolution). ``blur_sigma``
    smooths 8-bit staircase steps first; pixels with depth below ``background_threshold`` are drawn
    as facing the camera. ``convention`` picks the channel order (see the module docstring):
    ``normal_bae`` for ControlNet 1.1 normalbae, ``normal_midas`` for ControlNet 1.0 control_sd15_normal.
    """
    if convention not in NORMAL_CONVENTIONS:
        raise AnnotatorInputError(f"convention: expected one of {list(NORMAL_CONVENTIONS)}, found {convention!r}")
    maps = depth_to_batch(depth)
    height, width = maps.shape[1:]
    scale = float(strength) * min(height, width)

    def one_frame(frame: np.ndarray) -> np.ndarray:
        if blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), float(blur_sigma))
        # Sobel/8 is the central-difference slope averaged over 3 rows: per-pixel derivative.
        slope_x = cv2.Sobel(frame, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8.0 * scale
        slope_y = cv2.Sobel(frame, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8.0 * scale
        return np.stack([slope_x, slope_y], axis=-1)

    slopes = map_frames(one_frame, maps)
    if background_threshold > 0:
        slopes[maps < background_threshold] = 0.0
    # z = f(x, y) rising towards the viewer: the normal is (−∂f/∂x, −∂f/∂y, 1) in x-right/y-down axes,
    # so +slope_x means facing left (red) and +slope_y facing up (green).
    normal = np.concatenate([slopes, np.ones_like(slopes[..., :1])], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    if invert_x:
        normal[..., 0] *= -1
    if invert_y:
        normal[..., 1] *= -1
    normal = normal[..., list(NORMAL_CONVENTIONS[convention])]
    return np.clip(np.rint(normal * 127.5 + 127.5), 0, 255).astype(np.uint8)
