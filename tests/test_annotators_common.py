"""annotators.common: input normalisation, bad-input errors and the resolution round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from annotators.common import (
    AnnotatorInputError,
    MissingWeightsError,
    fit_to_resolution,
    to_batch_uint8,
    to_uint8_rgb,
)


def test_gray_rgb_rgba_float_and_uint8_inputs_become_uint8_rgb():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    expected = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(to_uint8_rgb(gray), expected)
    assert np.array_equal(to_uint8_rgb(gray[..., None]), expected)
    assert np.array_equal(to_uint8_rgb(gray.astype(np.float32) / 255.0), expected)
    assert np.array_equal(to_uint8_rgb(torch.from_numpy(gray.astype(np.float32) / 255.0)), expected)
    opaque = np.concatenate([expected, np.full((7, 9, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(to_uint8_rgb(opaque), expected)


def test_transparent_pixels_are_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent
    rgba[0, 0] = (10, 20, 30, 255)
    out = to_uint8_rgb(rgba)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert (out[1, 1] == 255).all()


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((0, 0, 3), np.uint8), "non-empty"),
        (np.zeros((0, 5), np.uint8), "non-empty"),
        (np.array([], np.uint8), "shape"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), np.inf, np.float32), "NaN/inf"),
        (np.zeros((4, 4, 3), np.uint16), "16-bit"),
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.full((4, 4, 3), 200.0, np.float32), "[0, 1]"),
        (None, "None"),
    ],
)
def test_bad_images_raise_a_clear_error(bad, words):
    with pytest.raises(AnnotatorInputError, match=None) as info:
        to_uint8_rgb(bad)
    assert words in str(info.value)


def test_batch_conversion_accepts_comfy_tensors_single_images_and_lists():
    batch = torch.rand(3, 5, 6, 3)
    out = to_batch_uint8(batch)
    assert out.shape == (3, 5, 6, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1], to_uint8_rgb(batch[1]))
    assert to_batch_uint8(np.zeros((5, 6), np.uint8)).shape == (1, 5, 6, 3)
    assert to_batch_uint8([np.zeros((5, 6, 3), np.uint8)] * 2).shape == (2, 5, 6, 3)
    with pytest.raises(AnnotatorInputError, match="empty batch"):
        to_batch_uint8(torch.rand(0, 5, 6, 3))
    with pytest.raises(AnnotatorInputError, match="one size"):
        to_batch_uint8([np.zeros((5, 6, 3), np.uint8), np.zeros((6, 5, 3), np.uint8)])


@pytest.mark.parametrize("size", [(301, 457), (512, 512), (97, 33), (1, 1)])
@pytest.mark.parametrize("resolution", [0, 64, 333, 512])
def test_fit_pads_to_multiples_of_64_and_restores_the_exact_size(size, resolution):
    image = np.zeros(size + (3,), np.uint8)
    padded, fit = fit_to_resolution(image, resolution)
    assert padded.shape[0] % 64 == 0 and padded.shape[1] % 64 == 0
    if resolution:
        assert min(fit.scaled_size) == resolution
    assert fit.restore(padded).shape == image.shape
    assert fit(padded[..., :1]).shape == size + (1,)
    assert fit(np.zeros(fit.padded_size, np.float32)).shape == size


@pytest.mark.parametrize("size", [(301, 457), (77, 129), (400, 600)])
@pytest.mark.parametrize("resolution", [64, 256, 517])
def test_round_trip_keeps_features_where_they_were(size, resolution):
    """A blob at (x, y) goes through resize+pad and back and is still centred on (x, y)."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * 0.37, width * 0.61
    blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (min(size) / 12) ** 2))
    padded, fit = fit_to_resolution(blob.astype(np.float32)[..., None], resolution)
    back = fit.restore(padded)[..., 0]
    centroid_x = (back * xs).sum() / back.sum()
    centroid_y = (back * ys).sum() / back.sum()
    assert abs(centroid_x - cx) < 0.5 and abs(centroid_y - cy) < 0.5


def test_padding_is_at_bottom_right_and_replicates_the_border():
    image = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    padded, fit = fit_to_resolution(image, 0)
    assert fit.scaled_size == (5, 3) and padded.shape == (64, 64, 3)
    assert np.array_equal(padded[:5, :3], image)
    assert np.array_equal(padded[63, 63], image[4, 2])


def test_restore_rejects_outputs_of_the_wrong_size():
    _, fit = fit_to_resolution(np.zeros((10, 10, 3), np.uint8), 64)
    with pytest.raises(AnnotatorInputError, match="spatial size"):
        fit.restore(np.zeros((32, 32)))


def test_missing_weights_error_names_file_and_folder():
    error = MissingWeightsError("body_pose_model.pth", "/models/annotators", annotator="OpenPose")
    assert isinstance(error, FileNotFoundError)
    assert "body_pose_model.pth" in str(error) and "/models/annotators" in str(error)
