"""ControlStack: several ControlNets on one generation, summed into one set of UNet residuals.

Each ControlEntry carries its own strength, schedule range, mask and per-residual weights. For a
UNet call the stack runs only the entries that are on (inside their range, strength > 0) and
returns  Σ strength · weight_i · mask_i · row_scale · residual_i.

Batches: the latent batch may hold several chunks (the host batches cond and uncond together);
`chunk_kinds` lists them (0 = cond, 1 = uncond). A hint or mask batch of 1 broadcasts; a batch equal
to the per-chunk batch pairs up and repeats for every chunk; anything else is an error.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .hint import INTERPOLATIONS, RESIZE_MODES, as_image_batch, as_mask_batch, prepare_hint, prepare_mask
from .controlnet.model import HINT_DOWNSCALE, ControlNetModel, Residuals

MAX_STRENGTH = 10.0


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also false for NaN
        raise InputError(f"{name}: expected a fraction of the schedule in [0, 1], found {value}")
    return value


def check_strength(value: float, name: str = "strength") -> float:
    value = float(value)
    if not math.isfinite(value) or not (0.0 <= value <= MAX_STRENGTH):
        raise InputError(f"{name}: expected a number in [0, {MAX_STRENGTH}], found {value}")
    return value


@dataclass(eq=False)
class ControlEntry:
    model: ControlNetModel
    image: torch.Tensor | np.ndarray          # control image, B×H×W×C (ComfyUI IMAGE) or H×W[×C]
    strength: float = 1.0
    start: float = 0.0                       # fraction of the schedule where the control starts
    end: float = 1.0
    mask: torch.Tensor | np.ndarray | None = None  # H×W or B×H×W, soft values allowed
    weights: Sequence[float] | None = None   # per residual: down residuals in encoder order, then mid
    resize_mode: str = "crop_and_resize"
    interpolation: str = "nearest-exact"
    uncond_strength: float = 1.0             # multiplier on uncond rows; 0 = "ControlNet is more important"
    enabled: bool = True
    _hint_cache: dict = field(default_factory=dict, init=False, repr=False)
    _mask_cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.strength = check_strength(self.strength)
        self.uncond_strength = check_strength(self.uncond_strength, "uncond_strength")
        self.start = _check_fraction("start", self.start)
        self.end = _check_fraction("end", self.end)
        if self.start > self.end:
            raise InputError(f"start ({self.start}) is after end ({self.end})")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode: expected one of {RESIZE_MODES}, found {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation: expected one of {INTERPOLATIONS}, found {self.interpolation!r}")
        self.image = as_image_batch(self.image)
        if self.mask is not None:
            self.mask = as_mask_batch(self.mask)
        expected = self.model.config.num_down_residuals + 1
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            if len(self.weights) != expected or not all(math.isfinite(w) for w in self.weights):
                raise InputError(f"weights: expected {expected} finite numbers ({expected - 1} down residuals + mid) "
                                 f"for this {self.model.family} ControlNet, found {self.weights}")

    def is_active(self, percent: float | None) -> bool:
        if not self.enabled or self.strength == 0.0:
            return False
        return percent is None or self.start <= percent <= self.end

    def hint_embedding(self, latent_h: int, latent_w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """input_hint_block output for this latent size, computed once and reused across steps; the
        key holds everything it depends on, so a new image, size, dtype or device recomputes it."""
        key = (id(self.image), _version_of(self.image), latent_h, latent_w, dtype, device, self.resize_mode,
               self.interpolation, _version_of(self.model.input_hint_block[0].weight))
        if key not in self._hint_cache:
            hint = prepare_hint(self.image, latent_h * HINT_DOWNSCALE, latent_w * HINT_DOWNSCALE, self.resize_mode,
                                self.model.config.hint_channels, self.interpolation)
            with torch.no_grad():
                embedding = self.model.embed_hint(hint.to(device=device, dtype=self.model.dtype))
            self._hint_cache = {key: embedding.to(dtype)}
        return self._hint_cache[key]

    def mask_at(self, latent_h: int, latent_w: int, height: int, width: int) -> torch.Tensor:
        """The mask resized to one residual's resolution (area averaging keeps soft edges honest)."""
        full_key = (latent_h, latent_w)  # the mask at hint resolution, placed like the hint
        if full_key not in self._mask_cache:
            self._mask_cache[full_key] = prepare_mask(self.mask, tuple(self.image.shape[1:3]), latent_h * HINT_DOWNSCALE,
                                                      latent_w * HINT_DOWNSCALE, self.resize_mode)
        key = (latent_h, latent_w, height, width)
        if key not in self._mask_cache:
            self._mask_cache[key] = F.interpolate(self._mask_cache[full_key], size=(height, width), mode="area")
        return self._mask_cache[key]

    def clear_cache(self) -> None:
        self._hint_cache = {}
        self._mask_cache = {}


def _version_of(tensor: torch.Tensor) -> int:
    """In-place edit counter. Inference tensors (ComfyUI runs nodes under torch.inference_mode) keep
    none, and cannot be edited outside inference mode, so they count as never edited."""
    return 0 if tensor.is_inference() else tensor._version


def _expand_batch(tensor: torch.Tensor, per_chunk: int, chunks: int, what: str) -> torch.Tensor:
    """Batch-1 broadcasts (kept at 1); a per-chunk batch repeats for every chunk; a full batch is used as is."""
    batch = tensor.shape[0]
    if batch == 1 or batch == per_chunk * chunks:
        return tensor
    if batch == per_chunk:
        return tensor.repeat(chunks, *([1] * (tensor.ndim - 1)))
    raise InputError(f"{what} batch of {batch} does not match the latent batch of {per_chunk}: expected 1 "
                     f"(used for every latent) or {per_chunk} (one per latent)")


class ControlStack:
    """An ordered set of ControlEntry; `residuals` sums the active ones for one UNet call."""

    def __init__(self, entries: Sequence[ControlEntry] = ()) -> None:
        self.entries: list[ControlEntry] = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: ControlEntry) -> "ControlStack":
        self.entries.append(entry)
        return self

    def active_entries(self, percent: float | None = None,
                       active: Callable[[ControlEntry], bool] | None = None) -> list[ControlEntry]:
        return [e for e in self.entries
                if e.enabled and e.strength > 0 and (active(e) if active is not None else e.is_active(percent))]

    def clear_cache(self) -> None:
        for entry in self.entries:
            entry.clear_cache()

    @torch.no_grad()
    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None = None, *, percent: float | None = None,
                  active: Callable[[ControlEntry], bool] | None = None,
                  chunk_kinds: Sequence[int] | None = None) -> Residuals | None:
        entries = self.active_entries(percent, active)
        if not entries:
            return None
        chunk_kinds = list(chunk_kinds) if chunk_kinds else [0]
        chunks = len(chunk_kinds)
        batch, _, latent_h, latent_w = x.shape
        if batch % chunks:
            raise InputError(f"latent batch {batch} does not split into {chunks} cond/uncond chunks")
        per_chunk = batch // chunks
        timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps.reshape(-1)

        total: Residuals | None = None
        for entry in entries:
            contribution = self._entry_residuals(entry, x, timesteps, context, y, chunk_kinds, per_chunk)
            if total is None:
                total = contribution
            else:
                total = Residuals([a + b for a, b in zip(total.down, contribution.down)], total.mid + contribution.mid)
        return total

    def _entry_residuals(self, entry: ControlEntry, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                         y: torch.Tensor | None, chunk_kinds: list[int], per_chunk: int) -> Residuals:
        model = entry.model
        chunks, (batch, _, latent_h, latent_w) = len(chunk_kinds), x.shape
        dtype = model.dtype
        embedding = _expand_batch(entry.hint_embedding(latent_h, latent_w, dtype, x.device), per_chunk, chunks,
                                  "control image")
        row_scale = torch.tensor([1.0 if kind == 0 else entry.uncond_strength for kind in chunk_kinds
                                  for _ in range(per_chunk)], dtype=dtype, device=x.device)
        rows = row_scale.nonzero().flatten()
        if rows.numel() == 0:
            zeros = [torch.zeros(batch, c, latent_h // f, latent_w // f, dtype=dtype, device=x.device)
                     for c, f in zip(model.config.residual_channels(), model.config.residual_downscale())]
            return Residuals(zeros[:-1], zeros[-1])
        subset = rows.numel() < batch  # only run the rows that receive control (e.g. cond only)
        if subset:
            pick = lambda t: t if t is None or t.shape[0] == 1 else t[rows]  # noqa: E731
            result = model(x[rows], None, timesteps[rows], pick(context), pick(y), hint_embedding=pick(embedding))
        else:
            result = model(x, None, timesteps, context, y, hint_embedding=embedding)

        weights = entry.weights or [1.0] * (len(result.down) + 1)
        scale = row_scale[rows] if subset else row_scale
        scale_rows = not bool((scale == 1).all())
        if entry.mask is not None:
            _expand_batch(entry.mask, per_chunk, chunks, "mask")  # refuse a bad batch before any work

        def finish(residual: torch.Tensor, weight: float) -> torch.Tensor:
            out = residual * (entry.strength * weight)
            if scale_rows:
                out = out * scale[:, None, None, None]
            if entry.mask is not None:
                mask = _expand_batch(entry.mask_at(latent_h, latent_w, *residual.shape[-2:]), per_chunk, chunks, "mask")
                if subset and mask.shape[0] != 1:
                    mask = mask[rows.to(mask.device)]
                out = out * mask.to(device=out.device, dtype=out.dtype)
            if subset:
                full = torch.zeros((batch, *out.shape[1:]), dtype=out.dtype, device=out.device)
                full[rows] = out
                out = full
            return out

        down = [finish(r, w) for r, w in zip(result.down, weights[:-1])]
        return Residuals(down, finish(result.mid, weights[-1]))
