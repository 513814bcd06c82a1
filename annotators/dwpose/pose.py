"""Top-down whole-body keypoints: a person box → an affine crop → SimCC → keypoints in image pixels.

As RTMPose is run by DWPose's ONNX annotator: the box is padded by 25 % and widened or heightened
to the network's aspect ratio (288:384), the crop is cut by an affine warp (bilinear, black
outside the image) that maps the box centre to the crop centre with one scale for both axes, and
normalised with ImageNet's RGB mean and std. Each keypoint's x and y are the arg-maxima of its two
SimCC vectors, which have two bins per input pixel; its score is the smaller of the two maxima.
Crop coordinates go back through the inverse of the same affine map.
"""
from __future__ import annotations

import cv2
import numpy as np

BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def box_centre_and_scale(box: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and crop size (w, h) in image pixels: the box padded by 25 % and grown to the
    network's aspect ratio (``input_size`` is height, width)."""
    x1, y1, x2, y2 = (float(value) for value in box)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    width, height = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = input_size[1] / input_size[0]
    if width > height * aspect:
        height = width / aspect
    else:
        width = height * aspect
    return centre, np.array([width, height])


def crop_matrix(centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """2×3 affine map from image pixels to crop pixels: ``(p - centre) × (crop width / scale w) + crop centre``."""
    zoom = input_size[1] / scale[0]
    return np.array(
        [
            [zoom, 0.0, input_size[1] / 2 - zoom * centre[0]],
            [0.0, zoom, input_size[0] / 2 - zoom * centre[1]],
        ]
    )


def crop_person(image: np.ndarray, box: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(``3×H×W`` float32 network input, centre, scale) for one person box of an ``H×W×3`` RGB uint8 image."""
    centre, scale = box_centre_and_scale(box, input_size)
    warped = cv2.warpAffine(
        image, crop_matrix(centre, scale, input_size), (input_size[1], input_size[0]), flags=cv2.INTER_LINEAR
    )
    normalised = (warped.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)), centre, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``N×K×Wx``, ``N×K×Wy`` → (keypoints ``N×K×2`` in crop pixels, scores ``N×K``).

    A keypoint whose score is not positive gets the location -1 (in bins), as in the reference.
    """
    x_bins, y_bins = simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    locations = np.stack([x_bins, y_bins], axis=-1).astype(np.float64)
    locations[scores <= 0] = -1
    return locations / SIMCC_SPLIT_RATIO, scores


def to_image(keypoints: np.ndarray, centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Crop pixels → image pixels, the inverse of :func:`crop_matrix`; ``keypoints`` is ``K×2``."""
    zoom = input_size[1] / scale[0]
    crop_centre = np.array([input_size[1] / 2, input_size[0] / 2])
    return (keypoints - crop_centre) / zoom + centre
