"""Building blocks against torch's own reference ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnet_core.ops import GEMM_CONV_MAX_PIXELS, GEMM_CONV_MIN_CHANNELS, Conv2d


@pytest.mark.parametrize("size, batch", [(4, 2), (8, 1), (8, 3)])
def test_small_spatial_gemm_conv_matches_conv2d(size, batch):
    # Full-size bottom-of-UNet shapes (1280 channels at 4×4 / 8×8) take the GEMM path.
    torch.manual_seed(size + batch)
    conv = Conv2d(1280, 1280, 3, padding=1)
    x = torch.randn(batch, 1280, size, size)
    assert conv._runs_as_gemm(x)
    with torch.no_grad():
        got = conv(x)
        reference = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert got.shape == reference.shape and got.is_contiguous()
    # Same sum of 11520 products in another order: float32 rounding only.
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=2e-5 * reference.abs().max().item())


def test_gemm_conv_only_where_it_pays():
    conv = Conv2d(GEMM_CONV_MIN_CHANNELS, 8, 3, padding=1)
    side = int(GEMM_CONV_MAX_PIXELS ** 0.5)
    assert conv._runs_as_gemm(torch.zeros(1, GEMM_CONV_MIN_CHANNELS, side, side))
    assert not conv._runs_as_gemm(torch.zeros(1, GEMM_CONV_MIN_CHANNELS, side * 2, side))  # many pixels
    assert not conv._runs_as_gemm(torch.zeros(1, GEMM_CONV_MIN_CHANNELS, side, side, dtype=torch.float16))
    narrow = Conv2d(320, 320, 3, padding=1)
    assert not narrow._runs_as_gemm(torch.zeros(1, 320, 4, 4))
    strided = Conv2d(GEMM_CONV_MIN_CHANNELS, 8, 3, stride=2, padding=1)
    assert not strided._runs_as_gemm(torch.zeros(1, GEMM_CONV_MIN_CHANNELS, 4, 4))
    no_bias = Conv2d(GEMM_CONV_MIN_CHANNELS, 16, 3, padding=1, bias=False)
    x = torch.randn(2, GEMM_CONV_MIN_CHANNELS, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(no_bias(x), F.conv2d(x, no_bias.weight, None, padding=1), rtol=1e-5, atol=1e-4)
