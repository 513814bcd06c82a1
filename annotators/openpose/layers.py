"""Building block shared by the OpenPose body and hand networks: a named conv/ReLU/max-pool stack.

The published ``.pth`` files (CMU Caffe models converted by pytorch-openpose) name every conv by a
unique layer name (``conv1_1``, ``Mconv3_stage4_L2`` ...). Keeping those names as the children of
our ``nn.Sequential`` stacks makes the key mapping a plain prefix (see ``checkpoint.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """One 3×3/7×7/1×1 conv (stride 1, 'same' padding); ``relu`` False for a stage's output layer."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    relu: bool = True


POOL = "pool"  # a 2×2 stride-2 max pool between conv groups


def build_stack(specs: list[ConvSpec | str]) -> nn.Sequential:
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    pool_count = 0
    for spec in specs:
        if spec == POOL:
            pool_count += 1
            layers[f"pool{pool_count}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            continue
        assert isinstance(spec, ConvSpec)
        layers[spec.name] = nn.Conv2d(
            spec.in_channels, spec.out_channels, kernel_size=spec.kernel_size, padding=spec.kernel_size // 2
        )
        if spec.relu:
            layers[f"relu_{spec.name}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def vgg_front(names_and_channels: list[tuple[str, int, int] | str]) -> list[ConvSpec | str]:
    """3×3 conv specs (all with ReLU) for a VGG-style front end; ``POOL`` entries pass through."""
    return [item if item == POOL else ConvSpec(item[0], item[1], item[2], 3) for item in names_and_channels]


def refinement_stage(suffix: str, in_channels: int, out_channels: int, width: int = 128) -> list[ConvSpec | str]:
    """Stages 2..6 of both networks: five 7×7 convs, a 1×1 conv, a 1×1 output conv without ReLU."""
    specs: list[ConvSpec | str] = [ConvSpec(f"Mconv1_{suffix}", in_channels, width, 7)]
    specs += [ConvSpec(f"Mconv{index}_{suffix}", width, width, 7) for index in range(2, 6)]
    specs.append(ConvSpec(f"Mconv6_{suffix}", width, width, 1))
    specs.append(ConvSpec(f"Mconv7_{suffix}", width, out_channels, 1, relu=False))
    return specs
