"""Turning a user's control image (and mask) into the tensor a ControlNet reads.

Images arrive as ComfyUI IMAGE tensors (B×H×W×C floats in [0, 1]) or numpy arrays, with 1, 3 or
4 channels. They are brought to the model's hint channels and to 8× the latent size with one of
the three resize modes users know from A1111 / ComfyUI:

- "just_resize": stretch to the target size, ignoring the aspect ratio;
- "crop_and_resize": centre-crop to the target aspect ratio, then resize (the host's behaviour);
- "resize_and_fill": fit inside the target keeping the aspect ratio and fill the border with the
  median colour of the image's edge pixels (as A1111 does), so the fill reads as "more of the same".

Masks follow the same geometry so they stay aligned with the hint.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")
# A control image smaller than this on a side carries no usable map (an 8×8 image is one latent pixel).
MIN_IMAGE_SIDE = 8
INTERPOLATIONS = ("nearest-exact", "bilinear", "bicubic", "area")


def as_image_batch(image: torch.Tensor | np.ndarray, what: str = "control image") -> torch.Tensor:
    """B×H×W×C float tensor from H×W, H×W×C or B×H×W×C input (uint8 or float)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{what}: expected an image tensor, found {type(image).__name__}")
    if tensor.ndim == 2:
        tensor = tensor[None, :, :, None]
    elif tensor.ndim == 3:
        tensor = tensor[None] if tensor.shape[-1] in (1, 3, 4) else tensor[..., None]
    if tensor.ndim != 4:
        raise InputError(f"{what}: expected H×W, H×W×C or B×H×W×C, found shape {tuple(tensor.shape)}")
    if tensor.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels in the last dimension, "
                         f"found shape {tuple(tensor.shape)}")
    if 0 in tensor.shape:
        raise InputError(f"{what}: the image is empty (shape {tuple(tensor.shape)})")
    if min(tensor.shape[1:3]) < MIN_IMAGE_SIDE:
        raise InputError(f"{what}: the image is {tensor.shape[1]}×{tensor.shape[2]} pixels, too small to carry a control "
                         f"map; expected at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} (is the right image connected?)")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise InputError(f"{what}: expected uint8 or float values in [0, 1], found dtype {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{what}: contains NaN or infinite values")
    return tensor


GRAY_RULES = ("luma", "mean")


def convert_channels(images: torch.Tensor, channels: int, gray: str = "luma") -> torch.Tensor:
    """B×H×W×C with C in {1, 3, 4} → B×H×W×channels: gray is repeated, alpha dropped, RGB→gray by
    `gray`: "luma" (ITU-R 601 weights) or "mean" (the plain channel mean the host's T2I-Adapter uses)."""
    if gray not in GRAY_RULES:
        raise InputError(f"gray conversion: expected one of {GRAY_RULES}, found {gray!r}")
    have = images.shape[-1]
    if have == 4:
        images, have = images[..., :3], 3
    if have == channels:
        return images
    if have == 1:
        return images.expand(*images.shape[:-1], channels)
    if channels == 1:
        if gray == "mean":
            return images.mean(-1, keepdim=True)
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * luma).sum(-1, keepdim=True)
    raise InputError(f"cannot convert a {have}-channel image to the {channels} channels this model reads")


def _resize(bchw: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    if tuple(bchw.shape[-2:]) == (height, width):
        return bchw
    align = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(bchw, size=(height, width), mode=interpolation, **align)


def center_crop_to_aspect(bchw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Trim equal amounts from both sides of the long dimension so the aspect matches height:width."""
    old_h, old_w = bchw.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    crop_x = crop_y = 0
    if old_aspect > new_aspect:
        crop_x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        crop_y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return bchw[..., crop_y:old_h - crop_y, crop_x:old_w - crop_x]


def _fit_and_fill(bchw: torch.Tensor, height: int, width: int, interpolation: str, fill: torch.Tensor) -> torch.Tensor:
    old_h, old_w = bchw.shape[-2:]
    scale = min(height / old_h, width / old_w)
    inner_h, inner_w = max(1, round(old_h * scale)), max(1, round(old_w * scale))
    inner = _resize(bchw, inner_h, inner_w, interpolation)
    out = fill[:, :, None, None].expand(bchw.shape[0], bchw.shape[1], height, width).clone()
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    out[..., top:top + inner_h, left:left + inner_w] = inner
    return out


def _edge_median(bchw: torch.Tensor) -> torch.Tensor:
    edges = torch.cat([bchw[..., 0, :], bchw[..., -1, :], bchw[..., :, 0], bchw[..., :, -1]], dim=-1)
    return edges.median(dim=-1).values  # B×C


def resize_to(bchw: torch.Tensor, height: int, width: int, mode: str, interpolation: str,
              fill: torch.Tensor | None = None) -> torch.Tensor:
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode: expected one of {RESIZE_MODES}, found {mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation: expected one of {INTERPOLATIONS}, found {interpolation!r}")
    if mode == "just_resize":
        return _resize(bchw, height, width, interpolation)
    if mode == "crop_and_resize":
        return _resize(center_crop_to_aspect(bchw, height, width), height, width, interpolation)
    return _fit_and_fill(bchw, height, width, interpolation, _edge_median(bchw) if fill is None else fill)


def prepare_hint(image: torch.Tensor | np.ndarray, height: int, width: int, mode: str = "crop_and_resize",
                 channels: int = 3, interpolation: str = "nearest-exact", gray: str = "luma") -> torch.Tensor:
    """B×channels×height×width float hint from a control image of any size and channel count.

    The result keeps the memory layout the image implies (a ComfyUI IMAGE, B×H×W×C in memory, gives
    a channels-last hint), as the host's own preparation does: convolutions pick their kernels by
    layout, so this is what keeps the first layers bit-identical to the host's."""
    images = convert_channels(as_image_batch(image), channels, gray)
    return resize_to(images.movedim(-1, 1), height, width, mode, interpolation)


def as_mask_batch(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """B×1×H×W float mask from H×W, B×H×W or B×1×H×W; soft values are kept."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"mask: expected a tensor, found {type(mask).__name__}")
    if tensor.ndim == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise InputError(f"mask: expected H×W or B×H×W, found shape {tuple(tensor.shape)}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise InputError("mask: contains NaN or infinite values")
    return tensor[:, None]


def prepare_mask(mask: torch.Tensor | np.ndarray, image_size: tuple[int, int], height: int, width: int,
                 mode: str, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
    """B×1×height×width mask aligned with a hint of height×width.

    A mask drawn on the control image (same H×W as the image) follows the hint's crop/fit; a mask
    at the hint size, at the generation size (latent × 8) or at the latent size is only scaled.
    Any other size cannot be placed unambiguously and is refused."""
    masks = as_mask_batch(mask)
    size = tuple(masks.shape[-2:])
    latent_h, latent_w = latent_size or (height // 8, width // 8)
    if size == tuple(image_size):
        # Filled borders carry no control: zero, not the image's edge colour.
        zero = torch.zeros(masks.shape[0], 1, dtype=masks.dtype, device=masks.device)
        return resize_to(masks, height, width, mode, "bilinear", fill=zero)
    if size in ((height, width), (latent_h * 8, latent_w * 8), (latent_h, latent_w)):
        return _resize(masks, height, width, "bilinear")
    raise InputError(f"mask is {size[0]}×{size[1]} (H×W) but the control image is {image_size[0]}×{image_size[1]} and "
                     f"the generation is {latent_h * 8}×{latent_w * 8} pixels ({latent_h}×{latent_w} latent): expected "
                     f"a mask the size of the control image, of the generation, or of the latent")
