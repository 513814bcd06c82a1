"""LeReS++: "Boosting Monocular Depth Estimation Models to High-Resolution via Content-Adaptive
Multi-Resolution Merging" (Miangoleh et al.), as the reference annotator runs it (controlnet_aux
``estimateboost``, from the stable-diffusion-webui depthmap script).

1. Pick the whole-image resolution R20 from the edge density (``processing_resolution``).
2. Estimate depth at the network's receptive field (448) and at R20 and merge the two with the pix2pix
   U-Net (``double_estimate``): low resolution gives the layout, high resolution the detail.
3. If R20 is within ``max_res`` (the detection image's long side), refine edge-dense patches: each
   patch gets its own double estimate, is merged with the whole-image estimate, fitted to it by a
   linear map, and blended in with a soft mask.

The reference's own quirks are kept because the ControlNet 1.1 depth_leres++ maps come from them:
``cv2.resize`` calls that pass an interpolation flag in the ``dst`` position (so they are bilinear),
and the RGB → BGR, 0..255 network input of :func:`network_input`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np
import torch

RECEPTIVE_FIELD = 448  # LeReS' receptive field: the "low resolution" of a double estimate
PATCH_NET_SIZE = 2 * RECEPTIVE_FIELD
WHOLE_SIZE_THRESHOLD = 1600  # R_max from the paper
EDGE_CONFIDENCE = 0.2  # r_threshold_value
SCALE_THRESHOLD = 3  # the whole image may be up-scaled up to ×3

Estimator = Callable[[np.ndarray, int], np.ndarray]  # (H×W×3 uint8 RGB, square size) → H×W depth
Merger = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (outer, inner) S×S maps → S×S merged in [0, 1]


@lru_cache(maxsize=2)
def blend_mask(size: int = 3000) -> np.ndarray:
    """The reference's patch mask: 1 inside a 15 % margin, Gaussian-blurred (σ = size/16), scaled to [0, 1].

    The reference blurs the 3000×3000 square directly (tens of seconds with its 749-tap kernel); the
    square is the outer product of two 1-D boxes and the blur is separable, so the same mask is the
    outer product of the blurred box (OpenCV's kernel and its reflect-101 border).
    """
    margin = int(0.15 * size)
    box = np.zeros(size, np.float64)
    box[margin : size - margin] = 1
    sigma = int(size / 16)
    taps = int(2 * math.ceil(2 * sigma) + 1)
    kernel = cv2.getGaussianKernel(taps, sigma)[:, 0]
    profile = np.convolve(np.pad(box, taps // 2, mode="reflect"), kernel, mode="valid")
    mask = np.outer(profile, profile)
    return ((mask - mask.min()) / (mask.max() - mask.min())).astype(np.float32)


def gray(rgb: np.ndarray) -> np.ndarray:
    return np.dot(rgb[..., :3].astype(np.float64), [0.2989, 0.5870, 0.1140])


def gradient_magnitude(rgb: np.ndarray) -> np.ndarray:
    luma = gray(rgb)
    return np.abs(cv2.Sobel(luma, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(cv2.Sobel(luma, cv2.CV_64F, 1, 0, ksize=3))


def max_pool_blocks(image: np.ndarray, block: int) -> np.ndarray:
    """Maximum over ``block``×``block`` tiles, the last partial tiles padded with 0 (skimage's block_reduce)."""
    height, width = image.shape
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = np.zeros((rows * block, cols * block), image.dtype)
    padded[:height, :width] = image
    return padded.reshape(rows, block, cols, block).max(axis=(1, 3))


def processing_resolution(rgb: np.ndarray, base_size: int = RECEPTIVE_FIELD) -> tuple[int, float]:
    """R20: the largest whole-image size at which edges still cover enough of the receptive field,
    and the share of the image near edges (``patch_scale``)."""
    speed_scale = 32
    side = int(min(rgb.shape[:2]))
    edges = cv2.resize(gradient_magnitude(rgb), (side, side))  # bilinear (the reference's flag is ignored)
    low, high = edges.min(), edges.max()
    edges = (edges >= low + 0.4 * (high - low)).astype(np.float64)
    kernel = np.ones((int(base_size / speed_scale),) * 2, np.float64)
    small_kernel = np.ones((int(base_size / (4 * speed_scale)),) * 2, np.float64)
    threshold = min(WHOLE_SIZE_THRESHOLD, SCALE_THRESHOLD * max(rgb.shape[:2]))
    best = base_size / speed_scale
    pooled = None
    for size in range(int(base_size / speed_scale), int(threshold / speed_scale), int(base_size / (2 * speed_scale))):
        pooled = max_pool_blocks(edges, int(np.floor(side / size)))
        pooled = cv2.resize(pooled, (size, size))  # bilinear, as in the reference
        pooled = (pooled >= 0.5).astype(np.float64)
        uncovered = (1 - cv2.dilate(pooled, kernel, iterations=1)).mean()
        if uncovered > EDGE_CONFIDENCE:
            break
        best = size
    if pooled is None:
        # Long side under 150 px: the reference's loop never runs (and it fails); take the receptive
        # field as the resolution and measure the edges at its grid.
        pooled = (cv2.resize(edges, (int(best),) * 2) >= 0.5).astype(np.float64)
    patch_scale = float(cv2.dilate(pooled, small_kernel, iterations=1).mean())
    return int(best * speed_scale), patch_scale


def double_estimate(rgb: np.ndarray, low: int, high: int, merge_size: int, estimate: Estimator, merge: Merger) -> np.ndarray:
    """Merge the estimates at ``low`` and ``high`` resolution (both resized to the merge size, cubic)."""
    first = cv2.resize(estimate(rgb, low), (merge_size, merge_size), interpolation=cv2.INTER_CUBIC)
    second = cv2.resize(estimate(rgb, high), (merge_size, merge_size), interpolation=cv2.INTER_CUBIC)
    return _unit_range(merge(first, second))


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes 0 (the reference would divide by zero)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def _patch_grid(image: np.ndarray, half: int, stride: int) -> list[list[int]]:
    """Candidate patches [x, y, w, h] of side 2·half on a grid, as the reference lays them out."""
    rects = []
    for x in range(half, image.shape[1] - half, stride):
        for y in range(half, image.shape[0] - half, stride):
            rects.append([x - half, y - half, 2 * half, 2 * half])
    return rects


def _region_sum(integral: np.ndarray, rect: list[int]) -> float:
    x, y, w, h = rect
    return integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]


def select_patches(rgb: np.ndarray, base_size: int, factor: float) -> list[list[int]]:
    """Edge-dense patches, each grown while it stays denser than the image, largest first."""
    edges = gradient_magnitude(rgb)
    edges[edges < edges[edges > 0].mean()] = 0
    density = edges.sum() / edges.size
    integral = cv2.integral(edges)
    height, width = integral.shape
    half = int(round(base_size / 2))
    step = int(32 / factor)
    selected = []
    for rect in _patch_grid(rgb, half, int(round(half * 0.75))):
        if _region_sum(integral, rect) / (rect[2] * rect[3]) < density:
            continue
        while True:
            grown = [rect[0] - step // 2, rect[1] - step // 2, rect[2] + step, rect[3] + step]
            if grown[0] < 0 or grown[1] < 0 or grown[1] + grown[3] >= height or grown[0] + grown[2] >= width:
                break
            if _region_sum(integral, grown) / (grown[2] * grown[3]) < density:
                break
            rect = grown
        selected.append(rect)
    # A stable sort by size, largest first, as the reference's sorted(..., reverse=True).
    return sorted(selected, key=lambda rect: rect[2], reverse=True)


def boosted_depth(rgb: np.ndarray, estimate: Estimator, merge: Merger, merge_size: int, max_res: int) -> np.ndarray:
    """The reference ``estimateboost`` for LeReS: depth (far = large) at the input's H×W."""
    height, width = rgb.shape[:2]
    optimal, patch_scale = processing_resolution(rgb)
    whole = double_estimate(rgb, RECEPTIVE_FIELD, optimal, merge_size, estimate, merge)
    factor = max(min(1.0, 4 * patch_scale * optimal / WHOLE_SIZE_THRESHOLD), 0.2)
    if max_res < optimal:  # no local boosting: the whole-image estimate is already the finest
        return cv2.resize(whole, (width, height), interpolation=cv2.INTER_CUBIC)

    if height > width:
        rows, cols = 2 * optimal, round(2 * optimal * width / height)
    else:
        rows, cols = round(2 * optimal * height / width), 2 * optimal
    rows, cols = int(round(rows / factor)), int(round(cols / factor))
    enlarged = cv2.resize(rgb, (cols, rows), interpolation=cv2.INTER_CUBIC)
    patches = select_patches(enlarged, PATCH_NET_SIZE, factor)
    scale = height / enlarged.shape[0]
    scaled_rgb = cv2.resize(enlarged, (round(enlarged.shape[1] * scale), round(enlarged.shape[0] * scale)),
                            interpolation=cv2.INTER_CUBIC)
    base = cv2.resize(whole, (round(enlarged.shape[1] * scale), round(enlarged.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    updated = base.copy()
    for rect in patches:
        x, y, w, h = np.round(np.array(rect) * scale).astype(int)
        patch_base = base[y : y + h, x : x + w]
        patch_depth = double_estimate(scaled_rgb[y : y + h, x : x + w], RECEPTIVE_FIELD, PATCH_NET_SIZE, merge_size, estimate, merge)
        patch_depth = cv2.resize(patch_depth, (merge_size, merge_size), interpolation=cv2.INTER_CUBIC)
        base_resized = cv2.resize(patch_base, (merge_size, merge_size), interpolation=cv2.INTER_CUBIC)
        mapped = merge(base_resized, patch_depth)  # in [0, 1], not renormalised
        slope, offset = np.polyfit(mapped.reshape(-1), base_resized.reshape(-1), deg=1)
        fitted = cv2.resize(slope * mapped + offset, (patch_base.shape[1], patch_base.shape[0]), interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(blend_mask(), (patch_base.shape[1], patch_base.shape[0]), interpolation=cv2.INTER_LINEAR)
        updated[y : y + h, x : x + w] = updated[y : y + h, x : x + w] * (1 - mask) + fitted * mask
    return cv2.resize(updated, (width, height), interpolation=cv2.INTER_CUBIC)


def merge_with(network: torch.nn.Module) -> Merger:
    """pix2pix's merge: both maps min-max normalised to [-1, 1], stacked (outer, inner), output (y + 1) / 2."""

    def merge(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
        parameter = next(network.parameters())
        pair = []
        for depth in (outer, inner):
            pair.append(torch.from_numpy(_unit_range(np.asarray(depth, dtype=np.float32))) * 2 - 1)
        batch = torch.stack(pair)[None].to(device=parameter.device, dtype=parameter.dtype)
        with torch.inference_mode():
            merged = network(batch)
        return ((merged[0, 0].float().cpu().numpy() + 1) / 2).astype(np.float64)

    return merge
