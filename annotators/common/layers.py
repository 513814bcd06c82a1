"""Small layers several annotator networks share."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_same(hidden: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow "SAME" padding: output size ceil(in / stride), the odd pixel of padding at bottom/right."""
    pads = []
    for size in (hidden.shape[-1], hidden.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(hidden, pads, value=value) if any(pads) else hidden
