"""Each image and caption encoded once: the VAE latents and the text encodings, kept for training.

Images are encoded once to the VAE's latent distribution (mean and standard deviation, already
multiplied by the latent scale factor); every step draws a fresh latent from it, as training on
the raw images would. Encoders that only give the mean (the ComfyUI host's VAE) train on the mean.
Captions are deduplicated and encoded once each, plus the empty prompt used for prompt dropout.
Control maps are not encoded (the ControlNet's hint block trains on the pixels): they are read
from disk per batch, or held in memory for in-memory datasets.

The cache can be written to and read from one .safetensors file, keyed by a fingerprint of the
data and the encoders, so a resumed run does not encode again.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .dataset import Example, load_hint, load_target
from .interfaces import TextCondition
from .output import save_safetensors

EMPTY_PROMPT = ""
PROMPT_BATCH = 32  # captions per text-encoder call


class DatasetEncoder(Protocol):
    """VAE and text encoder(s) of a base model."""

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B×3×R×R in [-1, 1] → scaled latent mean (B×C×R/8×R/8) and standard deviation (or None)."""

    def encode_prompts(self, prompts: list[str], resolution: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                            dict[str, torch.Tensor]]:
        """→ context U×tokens×D, y U×adm (SDXL) or None, and base-specific extras (U×…)."""


class HintStore:
    """Control maps as B×C×R×R float in [0, 1]: from memory (uint8 tensor) or read from disk per batch."""

    def __init__(self, *, tensor: torch.Tensor | None = None, examples: Sequence[Example] | None = None,
                 resolution: int | None = None) -> None:
        if (tensor is None) == (examples is None):
            raise ValueError("HintStore: give either an in-memory tensor or the dataset examples")
        self.tensor, self.examples, self.resolution = tensor, examples, resolution

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        if self.tensor is not None:
            hints = self.tensor[list(indices)]
        else:
            hints = torch.stack([load_hint(self.examples[i], self.resolution) for i in indices])
        return hints.float() / 255.0 if hints.dtype == torch.uint8 else hints.float()


@dataclass
class EncodedDataset:
    latent_mean: torch.Tensor                 # N×C×h×w, scaled
    latent_std: torch.Tensor | None           # N×C×h×w, scaled, or None (train on the mean)
    caption_index: torch.Tensor               # N, index into the text tables
    empty_index: int                          # the empty prompt's row in the text tables
    context: torch.Tensor                     # U×tokens×D
    y: torch.Tensor | None                    # U×adm or None
    hints: HintStore
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # U×…, base-specific

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    def __post_init__(self) -> None:
        # Tensors made under the host's inference mode cannot be saved for backward: keep normal copies.
        with torch.inference_mode(False):
            for name in ("latent_mean", "latent_std", "caption_index", "context", "y"):
                value = getattr(self, name)
                if value is not None and value.is_inference():
                    setattr(self, name, value.clone())
            self.extras = {k: v.clone() if v.is_inference() else v for k, v in self.extras.items()}

    def text(self, rows: torch.Tensor, device: torch.device) -> TextCondition:
        return TextCondition(
            context=self.context[rows].to(device),
            y=None if self.y is None else self.y[rows].to(device),
            unet_kwargs={k: v[rows].to(device) for k, v in self.extras.items()},
        )

    def batch(self, indices: torch.Tensor, dropped: torch.Tensor, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
        """(latents x0, hints, text) for `indices`; rows with `dropped` True get the empty prompt.
        The latent is drawn from the cached distribution with `generator`."""
        mean = self.latent_mean[indices]
        latents = mean
        if self.latent_std is not None:
            latents = mean + self.latent_std[indices] * torch.randn(mean.shape, generator=generator)
        rows = torch.where(dropped, torch.full_like(indices, self.empty_index), self.caption_index[indices])
        hints = self.hints(indices.tolist())
        return latents.to(device), hints.to(device), self.text(rows, device)

    # ---- on disk ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, fingerprint: object) -> None:
        tensors = {"latent_mean": self.latent_mean, "caption_index": self.caption_index, "context": self.context}
        if self.latent_std is not None:
            tensors["latent_std"] = self.latent_std
        if self.y is not None:
            tensors["y"] = self.y
        tensors.update({f"extra.{k}": v for k, v in self.extras.items()})
        save_safetensors(tensors, path, None, {"fingerprint": json.dumps(fingerprint, sort_keys=True),
                                               "empty_index": str(self.empty_index)})

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: object, hints: HintStore) -> "EncodedDataset | None":
        """The cached encodings, or None when the file is missing or was made from other data/encoders."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
                    return None
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception:  # an unreadable cache is only a cache: encode again
            return None
        return cls(latent_mean=tensors["latent_mean"], latent_std=tensors.get("latent_std"),
                   caption_index=tensors["caption_index"], empty_index=int(metadata["empty_index"]),
                   context=tensors["context"], y=tensors.get("y"), hints=hints,
                   extras={k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})


def encode_dataset(examples: Sequence[Example], resolution: int, encoder: DatasetEncoder, *,
                   batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> EncodedDataset:
    """Encode every image once and every distinct caption (plus the empty prompt) once."""
    total = len(examples)
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, total, batch_size):
            chunk = examples[start:start + batch_size]
            pixels = torch.stack([load_target(example, resolution) for example in chunk])
            mean, std = encoder.encode_images(pixels)
            means.append(mean.float().cpu())
            stds.append(None if std is None else std.float().cpu())
            if progress is not None:
                progress(min(start + batch_size, total), total)
        captions = sorted({example.caption for example in examples} | {EMPTY_PROMPT})
        row_of = {caption: row for row, caption in enumerate(captions)}
        contexts, ys, extras = [], [], {}
        for start in range(0, len(captions), PROMPT_BATCH):
            context, y, extra = encoder.encode_prompts(captions[start:start + PROMPT_BATCH], resolution)
            contexts.append(context.float().cpu())
            ys.append(None if y is None else y.float().cpu())
            for key, value in extra.items():
                extras.setdefault(key, []).append(value.float().cpu())
    return EncodedDataset(
        latent_mean=torch.cat(means),
        latent_std=None if any(s is None for s in stds) else torch.cat(stds),
        caption_index=torch.tensor([row_of[example.caption] for example in examples]),
        empty_index=row_of[EMPTY_PROMPT],
        context=torch.cat(contexts),
        y=None if any(y is None for y in ys) else torch.cat(ys),
        hints=HintStore(examples=list(examples), resolution=resolution),
        extras={k: torch.cat(v) for k, v in extras.items()},
    )
