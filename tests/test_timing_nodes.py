"""Weights, keyframe and curve nodes, and the apply nodes' new optional inputs, against the host stub.

The probe of test_controlnet_nodes adds (slot + 1) · (frame + 1) at every element: 4 skips (slots
0–3) and the middle (slot 4, value 5). The fake schedule maps percent p to sigma 14.6 − 14.57·p, so
every expected number below is derived by hand from the README's rules.
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from tests.test_controlnet_nodes import (LATENT, FakeModelSampling, apply, first, loaded, make_probe, nodes,  # noqa: F401
                                         folder, run_control, stack_inputs)


def timing(nodes):
    return importlib.import_module(nodes.__name__.rsplit(".", 1)[0] + ".timing_nodes")


def sigma_at(percent: float) -> float:
    return FakeModelSampling().percent_to_sigma(percent)


def test_curve_node_fades_the_control_out_over_the_last_40_percent(nodes):
    keyframes, = timing(nodes).StrengthCurveNode().build("0.6:1.0, 1.0:0.0", "linear")
    control, _, _ = apply(nodes, loaded(nodes, make_probe(("middle",))), torch.rand(1, 32, 32, 3), strength=0.5,
                          keyframes=keyframes)
    x = torch.zeros(2, 4, LATENT, LATENT)
    for percent, multiplier in ((0.3, 1.0), (0.6, 1.0), (0.7, 0.75), (0.9, 0.25)):
        out, _ = run_control(control, x, sigma_at(percent))
        # the sampler's sigma is float32, so the step's percent is known to ~1e-7
        assert first(out["middle"][0]) == pytest.approx([0.5 * multiplier] * 2, abs=1e-6), percent
    assert run_control(control, x, sigma_at(1.0))[0] is None  # strength 0 at the end: nothing computed


def test_keyframe_node_chains_and_switches_at_the_hosts_sigma_boundary(nodes):
    node = timing(nodes).TimestepKeyframeNode()
    weights, = timing(nodes).ControlWeightsNode().build("custom", 1.0, 0.5, "1, 1, 1, 1, 0.5")
    first_keyframe, = node.build(0.0, 1.0, "hold")
    group, = node.build(0.5, 0.25, "hold", prev_keyframes=first_keyframe, weights=weights)
    assert len(first_keyframe) == 1 and len(group) == 2  # chaining leaves the upstream group as it was
    control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), keyframes=group)
    x = torch.zeros(2, 4, LATENT, LATENT)
    before, _ = run_control(control, x, sigma_at(0.5) + 1e-3)
    assert first(before["middle"][0]) == [5.0, 5.0]
    at, _ = run_control(control, x, sigma_at(0.5))  # the host's rule: reached when sigma ≤ sigma(start)
    assert first(at["middle"][0]) == [5.0 * 0.25 * 0.5, 5.0 * 0.25 * 0.5 * 0.5]  # · weight · uncond multiplier
    assert first(at["output"][0]) == [0.25, 0.25 * 0.5]


def test_weights_node_preset_reaches_the_entry_and_a_misfit_names_both(nodes):
    weights, = timing(nodes).ControlWeightsNode().build("uniform", 0.5, 0.0)
    control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), weights=weights)
    out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    assert first(out["middle"][0]) == [2.5, 0.0] and first(out["output"][3]) == [2.0, 0.0]
    misfit, = timing(nodes).ControlWeightsNode().build("custom", 1.0, 1.0, "1, 1")
    with pytest.raises(Exception, match=r"custom weights \(2 values\) do not fit Probe 'probe.safetensors'"):
        apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), weights=misfit)  # before sampling


def test_each_host_context_window_uses_its_own_frames(nodes):
    control, _, _ = apply(nodes, loaded(nodes, make_probe(("middle",))), torch.rand(16, 32, 32, 3))
    x = torch.zeros(16, 4, LATENT, LATENT)  # a window of 8 latents, cond + uncond
    window = SimpleNamespace(index_list=list(range(8, 16)), dim=0, total_frames=16)  # the host's window object
    out, _ = run_control(control, x, 3.0, transformer_options={"context_window": window})
    assert first(out["middle"][0]) == [float(f + 1) for f in range(8, 16)] * 2
    animatediff = {"ad_params": {"sub_idxs": [3, 4, 5, 6, 7, 8, 9, 10], "full_length": 16}}
    out, _ = run_control(control, x, 3.0, transformer_options=animatediff)
    assert first(out["middle"][0]) == [float(f + 1) for f in range(3, 11)] * 2


def test_sparse_frame_indices_input(nodes):
    control, _, _ = apply(nodes, loaded(nodes, make_probe(("middle",))), torch.rand(2, 32, 32, 3),
                          frame_indices="0, 3")
    out, _ = run_control(control, torch.zeros(8, 4, LATENT, LATENT), 3.0)
    assert first(out["middle"][0]) == [1.0, 0.0, 0.0, 2.0] * 2


def test_stack_entries_take_weights_keyframes_and_frame_indices(nodes):
    keyframes, = timing(nodes).TimestepKeyframeNode().build(0.0, 0.5, "hold")
    weights, = timing(nodes).ControlWeightsNode().build("uniform", 2.0, 1.0)
    slots = stack_inputs(control_net_1=loaded(nodes, make_probe(("middle",))), image_1=torch.rand(2, 32, 32, 3),
                         weights_1=weights, keyframes_1=keyframes, frame_indices_1="1, 2")
    positive, _, stack = nodes.MultiControlStack().apply([[torch.zeros(1, 5, 768), {}]],
                                                         [[torch.zeros(1, 5, 768), {}]], None, **slots)
    out, _ = run_control(positive[0][1]["control"], torch.zeros(6, 4, LATENT, LATENT), 3.0)
    assert first(out["middle"][0]) == [0.0, 1.0, 2.0] * 2  # 1 · 0.5 · 2 · (frame + 1) on frames 1 and 2


def test_host_only_controls_refuse_weights_and_keyframes(nodes):
    host_object = importlib.import_module("comfy.controlnet").ControlBase()
    keyframes, = timing(nodes).TimestepKeyframeNode().build(0.0, 0.5, "hold")
    with pytest.raises(Exception, match="per-block weights, keyframes or sparse frames"):
        apply(nodes, host_object, torch.rand(1, 32, 32, 3), keyframes=keyframes)
