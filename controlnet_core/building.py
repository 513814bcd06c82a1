"""Building a model straight from a state dict: on the meta device, then the tensors assigned in.

Nothing is random-initialised first and no second copy is made, so loading needs little more
memory than the file itself. Every system's loader goes through `build_model`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .errors import CheckpointError


def dominant_float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    counts = Counter(v.dtype for v in state_dict.values() if v.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, found {tuple(state_dict[k].shape)}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:4])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not match the {what} architecture inferred from it: "
                              + "; ".join(problems) + ". The file is truncated, edited, or needs config overrides.")


def build_model(factory: Callable[[torch.dtype], nn.Module], state_dict: Mapping[str, torch.Tensor], *, source: str,
                what: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """`factory(dtype)` built on the meta device, its tensors assigned from `state_dict` (cast to
    `dtype`, default the file's), frozen and in eval mode."""
    dtype = dtype or dominant_float_dtype(state_dict)
    with torch.device("meta"):
        model = factory(dtype)
    check_keys(model, state_dict, source, what)
    tensors = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
               for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()
