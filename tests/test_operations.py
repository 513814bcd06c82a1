"""Injectable layer classes (controlnet_core.ops): weights kept in a storage dtype and cast per layer.

`CastingOps` below is written here the way the host's casting operations work (comfy.ops.manual_cast:
the layer casts its weight and bias to the input's dtype at call time); a model built with it from
an fp16 file must compute exactly what the same model computes from the same values loaded as fp32,
because fp16 → fp32 is exact. The real host operations are checked in tests/host/test_host_ops.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import controlnet_core
from controlnet_core import load_control
from controlnet_core.ops import GEMM_CONV_MAX_PIXELS, GEMM_CONV_MIN_CHANNELS, GemmConv2dMixin, with_gemm_convs
from tests.factories import diffusers_state_dict, ldm_state_dict, make_diffusers_controlnet, make_inputs, randomize_, \
    tiny_config
from tests.test_controlnext import ReferenceModuleA, reference_state


class CastingLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class CastingConv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class CastingGroupNorm(nn.GroupNorm):
    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class CastingLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


CastingOps = SimpleNamespace(Conv2d=CastingConv2d, Linear=CastingLinear, GroupNorm=CastingGroupNorm,
                             LayerNorm=CastingLayerNorm)


def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def test_controlnet_keeps_fp16_storage_and_computes_in_fp32():
    state = half(ldm_state_dict(make_diffusers_controlnet("sd1", seed=2)))
    overrides = tiny_config("sd1").overrides
    cast = controlnet_core.load_controlnet(state, dtype=torch.float16, operations=CastingOps,
                                           compute_dtype=torch.float32, overrides=overrides)
    plain = controlnet_core.load_controlnet(state, dtype=torch.float32, overrides=overrides)
    assert all(p.dtype == torch.float16 for p in cast.parameters()) and cast.dtype == torch.float32
    assert all(isinstance(m, GemmConv2dMixin) for m in cast.modules() if isinstance(m, CastingConv2d))
    inputs = make_inputs("sd1")
    with torch.no_grad():
        a = cast(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
        b = plain(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
    assert all(torch.equal(x, y) for x, y in zip(a.down + [a.mid], b.down + [b.mid]))


def test_t2i_adapter_and_controlnext_take_operations_too():
    from diffusers import T2IAdapter

    adapter = half({k: v.clone() for k, v in randomize_(T2IAdapter(channels=[32, 64, 64]), 1).state_dict().items()})
    module = half(reference_state(ReferenceModuleA(), 1))
    for state, run in ((adapter, lambda m: m(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))),
                       (module, lambda m: [m(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                                             torch.tensor([500.0]))])):
        cast = load_control(state, dtype=torch.float16, operations=CastingOps, compute_dtype=torch.float32,
                            variant="sdxl" if state is module else None)
        plain = load_control(state, dtype=torch.float32, variant="sdxl" if state is module else None)
        assert {p.dtype for p in cast.parameters()} == {torch.float16}
        with torch.no_grad():
            assert all(torch.equal(x, y) for x, y in zip(run(cast), run(plain)))


def test_gemm_path_mixes_into_any_conv_class_and_matches_its_convolution():
    gemm = with_gemm_convs(CastingOps).Conv2d
    assert issubclass(gemm, CastingConv2d) and issubclass(gemm, GemmConv2dMixin)
    torch.manual_seed(0)
    conv = gemm(GEMM_CONV_MIN_CHANNELS, 8, 3, padding=1).half()  # fp16 storage, cast to fp32 per call
    x = torch.randn(2, GEMM_CONV_MIN_CHANNELS, 4, 4)
    assert conv._runs_as_gemm(x) and 16 <= GEMM_CONV_MAX_PIXELS
    with torch.no_grad():
        reference = F.conv2d(x, conv.weight.float(), conv.bias.float(), padding=1)
        # The same 9216 products summed in another order: float32 rounding only.
        torch.testing.assert_close(conv(x), reference, rtol=1e-5, atol=1e-4)
