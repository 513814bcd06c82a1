"""Turn body heatmaps and part-affinity fields into people (the CMU OpenPose bottom-up grouping).

1. Peaks: each part heatmap is smoothed (Gaussian, sigma 3) and local maxima above a threshold
   become candidates.
2. Limbs: for every limb type and every (A, B) candidate pair, the PAF is sampled at points along
   the segment and projected on its direction; pairs whose field agrees along most of the segment
   are connected, greedily by score, each candidate used once.
3. People: connections sharing a candidate are merged into skeletons; skeletons with few parts or
   a low mean score are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NUM_BODY_PARTS = 18

# (part A, part B) per limb, 0-based COCO-18 indices; the last two (ear-shoulder) only help grouping.
LIMB_PARTS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
# PAF channels (x, y) for each limb above, in the published model's channel order.
LIMB_PAF_CHANNELS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
# Limbs from this index on never start a new person (they are redundant head-shoulder links).
FIRST_GROUPING_ONLY_LIMB = 17


@dataclass(frozen=True)
class BodyDecodeConfig:
    """Thresholds of the reference implementation (pytorch-openpose / ControlNet)."""

    peak_threshold: float = 0.1
    paf_threshold: float = 0.05
    smoothing_sigma: float = 3.0
    samples_per_limb: int = 10
    min_fraction_above_threshold: float = 0.8
    min_parts: int = 4
    min_mean_score: float = 0.4


@dataclass(frozen=True)
class Peak:
    x: int
    y: int
    score: float
    id: int  # index into the flat list of all peaks of all parts


def find_peaks(heatmaps: np.ndarray, config: BodyDecodeConfig = BodyDecodeConfig()) -> list[list[Peak]]:
    """Per part (first 18 channels of H×W×C ``heatmaps``), the local maxima of the smoothed map."""
    peaks_per_part: list[list[Peak]] = []
    next_id = 0
    for part in range(NUM_BODY_PARTS):
        raw = np.ascontiguousarray(heatmaps[:, :, part], dtype=np.float32)
        smooth = cv2.GaussianBlur(raw, (0, 0), config.smoothing_sigma, borderType=cv2.BORDER_REFLECT)
        padded = np.pad(smooth, 1)  # zero outside the image, like the reference
        centre = padded[1:-1, 1:-1]
        # Strictly above the upper/left neighbours, at least the lower/right ones: a two-pixel
        # plateau (a peak centred between pixels) gives one candidate, not two rival ones.
        is_peak = (
            (centre > padded[:-2, 1:-1])
            & (centre >= padded[2:, 1:-1])
            & (centre > padded[1:-1, :-2])
            & (centre >= padded[1:-1, 2:])
            & (centre > config.peak_threshold)
        )
        ys, xs = np.nonzero(is_peak)
        order = np.lexsort((xs, ys))  # row-major, matching the reference's candidate order
        part_peaks = [
            Peak(int(xs[i]), int(ys[i]), float(raw[ys[i], xs[i]]), next_id + rank) for rank, i in enumerate(order)
        ]
        next_id += len(part_peaks)
        peaks_per_part.append(part_peaks)
    return peaks_per_part


def _connect_limb(
    candidates_a: list[Peak],
    candidates_b: list[Peak],
    paf_x: np.ndarray,
    paf_y: np.ndarray,
    image_height: int,
    config: BodyDecodeConfig,
) -> list[tuple[int, int, float]]:
    """Chosen (peak id A, peak id B, limb score) pairs for one limb type."""
    a_xy = np.array([(peak.x, peak.y) for peak in candidates_a], dtype=np.float64)  # nA×2
    b_xy = np.array([(peak.x, peak.y) for peak in candidates_b], dtype=np.float64)  # nB×2
    vectors = b_xy[None, :, :] - a_xy[:, None, :]  # nA×nB×2
    norms = np.maximum(np.linalg.norm(vectors, axis=-1), 1e-3)
    directions = vectors / norms[..., None]
    steps = np.linspace(0.0, 1.0, config.samples_per_limb)
    samples = a_xy[:, None, None, :] + steps[None, None, :, None] * vectors[:, :, None, :]  # nA×nB×S×2
    sample_x = np.clip(np.rint(samples[..., 0]).astype(np.int64), 0, paf_x.shape[1] - 1)
    sample_y = np.clip(np.rint(samples[..., 1]).astype(np.int64), 0, paf_x.shape[0] - 1)
    alignment = (
        paf_x[sample_y, sample_x] * directions[:, :, None, 0] + paf_y[sample_y, sample_x] * directions[:, :, None, 1]
    )  # nA×nB×S: PAF projected on the limb direction
    # Long limbs (over half the image height) are penalised.
    scores = alignment.mean(axis=-1) + np.minimum(0.5 * image_height / norms - 1.0, 0.0)
    agreeing = (alignment > config.paf_threshold).sum(axis=-1) > config.min_fraction_above_threshold * len(steps)
    valid = agreeing & (scores > 0)

    candidates = [(float(scores[i, j]), i, j) for i, j in zip(*np.nonzero(valid))]
    candidates.sort(key=lambda item: item[0], reverse=True)  # stable: ties keep (i, j) order
    used_a: set[int] = set()
    used_b: set[int] = set()
    chosen: list[tuple[int, int, float]] = []
    for score, i, j in candidates:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        chosen.append((candidates_a[i].id, candidates_b[j].id, score))
        if len(chosen) >= min(len(candidates_a), len(candidates_b)):
            break
    return chosen


def group_people(
    peaks_per_part: list[list[Peak]],
    pafs: np.ndarray,
    image_height: int,
    config: BodyDecodeConfig = BodyDecodeConfig(),
) -> list[list[Peak | None]]:
    """Assemble people (18 entries each, ``None`` where a part is missing) from peaks and H×W×38 PAFs."""
    all_peaks = {peak.id: peak for part in peaks_per_part for peak in part}
    # A person row: peak id per part (-1 = none), then total score and part count.
    people: list[np.ndarray] = []
    for limb, ((part_a, part_b), (channel_x, channel_y)) in enumerate(zip(LIMB_PARTS, LIMB_PAF_CHANNELS)):
        candidates_a, candidates_b = peaks_per_part[part_a], peaks_per_part[part_b]
        if not candidates_a or not candidates_b:
            continue
        connections = _connect_limb(
            candidates_a, candidates_b, pafs[:, :, channel_x], pafs[:, :, channel_y], image_height, config
        )
        for id_a, id_b, limb_score in connections:
            owners = [index for index, row in enumerate(people) if row[part_a] == id_a or row[part_b] == id_b]
            if len(owners) == 1:
                row = people[owners[0]]
                if row[part_b] != id_b:
                    row[part_b] = id_b
                    row[-1] += 1
                    row[-2] += all_peaks[id_b].score + limb_score
            elif len(owners) == 2:
                first, second = people[owners[0]], people[owners[1]]
                overlap = ((first[:-2] >= 0) & (second[:-2] >= 0)).any()
                if not overlap:  # two partial skeletons joined by this limb: merge them
                    first[:-2] += second[:-2] + 1
                    first[-2:] += second[-2:]
                    first[-2] += limb_score
                    del people[owners[1]]
                else:
                    first[part_b] = id_b
                    first[-1] += 1
                    first[-2] += all_peaks[id_b].score + limb_score
            elif not owners and limb < FIRST_GROUPING_ONLY_LIMB:
                row = -np.ones(NUM_BODY_PARTS + 2)
                row[part_a], row[part_b] = id_a, id_b
                row[-1] = 2
                row[-2] = all_peaks[id_a].score + all_peaks[id_b].score + limb_score
                people.append(row)

    result = []
    for row in people:
        parts, total_score = row[-1], row[-2]
        if parts < config.min_parts or total_score / parts < config.min_mean_score:
            continue
        result.append([all_peaks[int(peak_id)] if peak_id >= 0 else None for peak_id in row[:NUM_BODY_PARTS]])
    return result


def decode_bodies(
    heatmaps: np.ndarray, pafs: np.ndarray, config: BodyDecodeConfig = BodyDecodeConfig()
) -> list[list[Peak | None]]:
    """People from H×W×(≥18) heatmaps and H×W×38 PAFs sampled at the image's pixel grid."""
    if heatmaps.shape[:2] != pafs.shape[:2]:
        raise ValueError(f"heatmaps {heatmaps.shape} and PAFs {pafs.shape} must share H×W")
    peaks = find_peaks(heatmaps, config)
    return group_people(peaks, pafs, heatmaps.shape[0], config)
