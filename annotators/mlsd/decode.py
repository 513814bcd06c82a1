"""From M-LSD's output maps to line segments, for a whole batch at once.

A pixel is a line centre where its centre score (sigmoid of channel 0) is the maximum of its 3×3
neighbourhood; the 200 best centres are kept. Each centre whose score exceeds
``score_threshold`` and whose segment (the two displacement vectors of channels 1-4) is longer
than ``distance_threshold`` output pixels becomes a segment. Coordinates are doubled to the
network's input pixels (the output has half its resolution), as the M-LSD reference code does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TOP_K = 200
PEAK_WINDOW = 3


def decode_segments(
    maps: torch.Tensor, *, score_threshold: float = 0.1, distance_threshold: float = 0.1, top_k: int = TOP_K
) -> list[np.ndarray]:
    """``maps``: B×9×h×w network output → per frame an ``N×4`` float64 array ``(x1, y1, x2, y2)``
    in input pixels (2× the output grid). Thresholds compare in float32, as the reference does."""
    maps = maps.float()
    batch, _, height, width = maps.shape
    scores = torch.sigmoid(maps[:, 0])
    peaks = F.max_pool2d(scores, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
    scores = (scores * (peaks == scores).float()).reshape(batch, -1)
    top_scores, top_indices = torch.topk(scores, min(top_k, height * width), dim=-1)
    rows = (top_indices // width).cpu().numpy()
    cols = (top_indices % width).cpu().numpy()
    top_scores = top_scores.cpu().numpy()
    displacement = maps[:, 1:5].permute(0, 2, 3, 1).cpu().numpy()  # B×h×w×4: start x, y, end x, y

    segments = []
    for frame in range(batch):
        y, x = rows[frame], cols[frame]
        moves = displacement[frame, y, x]  # K×4 float32
        span = moves[:, :2] - moves[:, 2:]
        length = np.sqrt(span[:, 0] ** 2 + span[:, 1] ** 2)
        keep = (top_scores[frame] > np.float32(score_threshold)) & (length > np.float32(distance_threshold))
        centre = np.stack([x, y, x, y], axis=1)[keep].astype(np.float64)
        segments.append(2.0 * (centre + moves[keep].astype(np.float64)))
    return segments
