"""The layer classes every model here is built from, injectable like the host's `operations`.

A model takes `operations`: a namespace with `Conv2d`, `Linear`, `GroupNorm` and `LayerNorm`
classes built like torch's. The default is torch's own layers. The ControlNet, which runs the
UNet encoder's wide bottom convolutions at every step, adds the CPU GEMM path below to whatever
it is given (`with_gemm_convs`); models that run once per image keep the plain convolution.
ComfyUI passes its casting operations (comfy.ops), which keep weights in their storage dtype
(fp16, fp8…), cast them per layer at call time and let the host load a model partially (low VRAM):
the parameter names are the same either way, so one loader serves both.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

# Few pixels and many channels: below this many output pixels per sample, with at least this many
# input channels, a CPU float32 3×3 convolution runs as unfold + one GEMM (see GemmConv2dMixin).
GEMM_CONV_MAX_PIXELS = 64
GEMM_CONV_MIN_CHANNELS = 1024


class GemmConv2dMixin:
    """Runs 3×3 stride-1 convolutions over few pixels with many channels as unfold + one matrix
    multiply on the CPU; everything else goes to the layer's own convolution.

    oneDNN re-lays out a plain float32 weight on every call; for a 1280×1280×3×3 kernel (59 MB) at
    the 4×4 or 8×8 bottom of the UNet that copy costs more than the arithmetic (measured 57 ms vs
    18 ms at 4×4, 93 ms vs 58 ms at 8×8 on one core). The GEMM reads the weight once, in place.

    It overrides `_conv_forward(input, weight, bias)`, which torch's Conv2d and the host's casting
    Conv2d both call with the weight they will use, so it mixes into either."""

    def _runs_as_gemm(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and self.kernel_size == (3, 3)
                and self.stride == (1, 1) and self.padding == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and self.in_channels >= GEMM_CONV_MIN_CHANNELS
                and x.shape[-2] * x.shape[-1] <= GEMM_CONV_MAX_PIXELS)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._runs_as_gemm(x) or weight.dtype != torch.float32:
            return super()._conv_forward(x, weight, bias)
        batch, _, height, width = x.shape
        columns = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(batch * height * width, -1)  # (B·H·W)×(C·9)
        matrix = weight.reshape(weight.shape[0], -1).t()
        out = torch.addmm(bias, columns, matrix) if bias is not None else columns @ matrix
        # Back to a contiguous B×C×H×W: a channels-last view would spread into every later layer.
        return out.view(batch, height * width, -1).permute(0, 2, 1).contiguous().view(batch, -1, height, width)


class Conv2d(GemmConv2dMixin, nn.Conv2d):
    """torch's Conv2d (same parameters and names) with the CPU GEMM path."""


def with_gemm_convs(operations) -> SimpleNamespace:
    """`operations` (a namespace or the host's class of layer classes) with its Conv2d given the
    CPU GEMM path; the other layers are taken as they are."""
    conv = operations.Conv2d
    if not issubclass(conv, GemmConv2dMixin):
        conv = type(f"Gemm{conv.__name__}", (GemmConv2dMixin, conv), {"__module__": __name__})
    return SimpleNamespace(Conv2d=conv, Linear=operations.Linear, GroupNorm=operations.GroupNorm,
                           LayerNorm=operations.LayerNorm)


# torch's layers: what a model is built from when nobody injects anything.
default_operations = SimpleNamespace(Conv2d=nn.Conv2d, Linear=nn.Linear, GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm)
