"""ControlNet-LLLite (kohya): MLPs on the inputs of the UNet's attention projections (see model.py)."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

import torch

from ..building import build_model
from ..checkpoint_io import read_state_dict
from ..errors import CheckpointError
from ..identity import Identity
from ..ops import default_operations
from .model import PREFIX, LLLiteModel, LLLiteModule, LLLiteModuleSpec, module_specs


def detect(shapes: Mapping[str, tuple[int, ...]], source: str) -> Identity | None:
    if not any(k.startswith(PREFIX) for k in shapes):
        return None
    try:
        specs = module_specs(shapes, source)
    except CheckpointError as error:
        return Identity("LLLite", "unsupported module layout", "kohya", None, runs_here=False, advice=str(error))
    model_family = "sd1" if any(s.block is not None and s.block <= 2 for s in specs) else "sdxl"
    per_block = Counter(s.where for s in specs)
    details = {"modules": f"{len(specs)} ({', '.join(f'{block}: {n}' for block, n in per_block.items())})",
               "cond emb / mlp": f"{specs[0].cond_emb_dim} / {specs[0].mlp_dim}",
               "acts on": "attn1 to_q/to_k/to_v and attn2 to_q inputs", "hint": "8× the latent, in [-1, 1]"}
    return Identity("LLLite", f"{len(specs)} attention modules", "kohya", model_family, details=details)


def load_lllite(source: str | os.PathLike | Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu", operations=default_operations,
                compute_dtype: torch.dtype | None = None) -> LLLiteModel:
    """An LLLite file (or state dict) as a ControlModel; the module layout is read from its shapes."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    specs = module_specs({k: tuple(v.shape) for k, v in state.items()}, name)
    model = build_model(lambda dt: LLLiteModel(specs, operations, dtype=dt, compute_dtype=compute_dtype), state,
                        source=name, what="LLLite", dtype=dtype, device=device)
    model.source = name
    return model


__all__ = ["LLLiteModel", "LLLiteModule", "LLLiteModuleSpec", "detect", "load_lllite", "module_specs"]
