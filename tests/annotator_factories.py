"""Helpers shared by the neural annotator tests: random weights in a model's own layout, files of
another network, and the error a loader gives for a file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from annotators.common import AnnotatorInputError


def randomised(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """``model`` (eval mode) with every parameter drawn at random and plausible BatchNorm statistics;
    other buffers (constants such as ZoeDepth's binomial coefficients) are kept."""
    generator = torch.Generator().manual_seed(seed)
    parameters = {name for name, _ in model.named_parameters()}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            is_statistic = name.endswith(("running_var", "running_mean"))
            if not tensor.is_floating_point() or (name not in parameters and not is_statistic):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    return model.eval()


def save_zeros_like(factory: Callable[[], nn.Module], path: Path, wrapper: str | None = None) -> Path:
    """Save a zero-filled state dict in ``factory()``'s layout (built on the meta device) to ``path``."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in factory().state_dict().items()}
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    torch.save({wrapper: state} if wrapper else state, path)
    return path


def load_error(load: Callable[[Path], object], path: Path) -> str:
    """The message of the AnnotatorInputError that loading ``path`` raises."""
    with pytest.raises(AnnotatorInputError) as caught:
        load(path)
    return str(caught.value)


def assert_box(mask, top: int, left: int, height: int, width: int) -> None:
    """The true pixels of ``mask`` span exactly the box (to one pixel): the map is aligned with the input."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    assert abs(ys.min() - top) <= 1 and abs(ys.max() - (top + height - 1)) <= 1, (ys.min(), ys.max(), top, height)
    assert abs(xs.min() - left) <= 1 and abs(xs.max() - (left + width - 1)) <= 1, (xs.min(), xs.max(), left, width)


def assert_missing_file_named(load_folder: Callable[[Path], object], folder: Path, file_name: str) -> None:
    """Loading from ``folder`` without ``file_name`` raises MissingWeightsError naming both."""
    from annotators.common import MissingWeightsError

    with pytest.raises(MissingWeightsError) as missing:
        load_folder(folder)
    assert file_name in str(missing.value) and str(folder) in str(missing.value)


class StandIn(nn.Module):
    """A stand-in network ``function(input)`` with one (unused) parameter, so detectors find its device
    and dtype; it records every input it is given, to check the pre-processing."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function
        self.anchor = nn.Parameter(torch.zeros(1))
        self.inputs: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.inputs.append(image.clone())
        return self.function(image)
