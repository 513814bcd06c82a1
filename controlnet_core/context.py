"""Video batches: which control frame each latent row uses, with sliding context windows and sparse controls.

One rule for every system, control images and masks alike (`pair_frames`, the host's own
`broadcast_image_to`): over the N latent frames of the video, 1 control frame serves every latent,
N frames pair one per latent (more are cut to the first N), a divisor of N repeats in turn.

Context windows: when the sampler runs the UNet on a window of the video (the host's
comfy/context_windows.py, AnimateDiff-Evolved's `sub_idxs`), the rows of each cond/uncond chunk are
the latent frames `window` (indices into the full video of `full_length` frames), and each row takes
the control frame of *its own* latent frame. The host's core ControlNet pairs by position in the
call instead, so every window gets the first frames.

Sparse controls: `frame_indices[k]` is the latent frame that control frame k belongs to; latent
frames not listed get no control at all (their rows are not computed, and what is added there is
exactly zero, so they match a run without this control bit for bit).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError


def pair_frames(frames: int, per_chunk: int, chunks: int = 1, what: str = "control image") -> torch.Tensor:
    """Which frame each latent row uses, for `chunks` chunks of `per_chunk` latents (the host's
    `broadcast_image_to` rule): 1 frame serves every latent; with at least `per_chunk` frames latent
    j takes frame j (frames past `per_chunk` are unused, as in the host); a divisor of `per_chunk`
    repeats in turn (0, 1, 0, 1…). Any other count cannot pair and is refused."""
    if frames == 1:
        index = torch.zeros(per_chunk, dtype=torch.long)
    elif frames >= per_chunk:
        index = torch.arange(per_chunk)
    elif per_chunk % frames == 0:
        index = torch.arange(per_chunk) % frames
    else:
        raise InputError(f"{what} batch of {frames} does not pair with the latent batch of {per_chunk}: expected 1 "
                         f"(used for every latent), {per_chunk} (one per latent; more are cut to the first "
                         f"{per_chunk}) or a divisor of {per_chunk} (repeated in turn)")
    return index.repeat(chunks)


@dataclass(frozen=True)
class FrameWindow:
    """The latent frames of the video one UNet call covers, per cond/uncond chunk."""

    indices: tuple[int, ...]
    full_length: int | None = None   # frames in the whole video, when the sampler says

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        if not self.indices or min(self.indices) < 0:
            raise InputError(f"context window: expected frame indices ≥ 0, found {list(self.indices)}")
        if self.full_length is not None and max(self.indices) >= self.full_length:
            raise InputError(f"context window {list(self.indices)} reaches past the video's {self.full_length} frames")


def window_from_options(transformer_options: Mapping[str, Any] | None) -> FrameWindow | None:
    """The window of this UNet call from the sampler's transformer options: the host's
    `context_window` (an IndexListContextWindow over the batch dimension; `total_frames` on newer
    hosts) or AnimateDiff-Evolved's `ad_params` (`sub_idxs`, `full_length`). None outside windows."""
    if not transformer_options:
        return None
    window = transformer_options.get("context_window")
    if window is not None and getattr(window, "dim", 0) == 0 and getattr(window, "index_list", None) is not None:
        total = getattr(window, "total_frames", None)
        return FrameWindow(tuple(int(i) for i in window.index_list), int(total) if total else None)
    ad_params = transformer_options.get("ad_params")
    if isinstance(ad_params, Mapping) and ad_params.get("sub_idxs") is not None:
        full = ad_params.get("full_length")
        return FrameWindow(tuple(int(i) for i in ad_params["sub_idxs"]), int(full) if full else None)
    return None


def check_frame_indices(frame_indices: Sequence[int], frames: int, what: str = "control image") -> tuple[int, ...]:
    """Sparse frame indices: one per control frame (or any number for a single frame), distinct, ≥ 0."""
    indices = tuple(int(i) for i in frame_indices)
    if not indices:
        raise InputError(f"frame_indices: expected at least one latent frame index for the {what}, found none")
    if min(indices) < 0 or len(set(indices)) != len(indices):
        raise InputError(f"frame_indices: expected distinct latent frame indices ≥ 0, found {list(indices)}")
    if frames != 1 and frames != len(indices):
        raise InputError(f"frame_indices lists {len(indices)} latent frames but the {what} has {frames} frames: "
                         f"give one index per frame (or a single frame for all listed)")
    return indices


def parse_frame_indices(text: str) -> tuple[int, ...] | None:
    """'0, 8, 15' or '0-3, 8' as latent frame indices; None for an empty text."""
    indices: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                indices.extend(range(low, high + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise InputError(f"frame_indices: expected frame numbers or ranges separated by commas (e.g. '0, 8, "
                             f"12-15'), found {part!r} in {text!r}") from None
    return tuple(indices) if indices else None


def row_frames(frames: int, per_chunk: int, chunks: int, window: FrameWindow | None = None,
               frame_indices: Sequence[int] | None = None, what: str = "control image"
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(control frame of each latent row, rows that get control or None for all) for a call of
    `chunks` chunks of `per_chunk` rows.

    Without a window, row j of a chunk is latent frame j of a video of `per_chunk` frames; in a window
    it is `window.indices[j]` of the full video. Sparse `frame_indices` pick the latent frames that
    get control; unlisted frames are uncontrolled (their index is 0 and they are left out of the mask)."""
    if window is not None and len(window.indices) != per_chunk:
        raise InputError(f"context window of {len(window.indices)} frames does not match the UNet call's "
                         f"{per_chunk} latents per cond/uncond chunk")
    latent = torch.tensor(window.indices if window is not None else range(per_chunk), dtype=torch.long)
    if frame_indices is not None:
        indices = check_frame_indices(frame_indices, frames, what)
        lookup = {f: (k if frames > 1 else 0) for k, f in enumerate(indices)}
        index = torch.tensor([lookup.get(int(f), 0) for f in latent], dtype=torch.long)
        controlled = torch.tensor([int(f) in lookup for f in latent])
        return index.repeat(chunks), (None if bool(controlled.all()) else controlled.repeat(chunks))
    if window is None:
        return pair_frames(frames, per_chunk, chunks, what), None
    full = window.full_length
    if full is None:  # the sampler did not say: one frame per latent when there are enough, else the window's reach
        full = frames if frames > max(window.indices) else max(window.indices) + 1
    return pair_frames(frames, full, 1, what)[latent].repeat(chunks), None
