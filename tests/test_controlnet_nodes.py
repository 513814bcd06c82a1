"""Node layer without a host: nodes/controlnet_nodes.py against tests/comfy_stub.py.

What the real host does with these objects is checked in tests/host/ (skipped without COMFYUI_PATH).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from comfy_stub import import_nodes
import importlib

from controlnet_core import ControlNetConfig, ControlNetModel

TINY = ControlNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 0),
                        context_dim=768, num_heads=8)
# The host's unet_config for a UNet these tiny ControlNets fit.
TINY_UNET_CONFIG = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "context_dim": 768,
                    "adm_in_channels": None}
LATENT = 4
SIGMAS = (14.6, 0.03)  # sigma at percent 0 and 1 of the fake schedule


def tiny_state_dict(seed: int, config: ControlNetConfig = TINY) -> dict[str, torch.Tensor]:
    model = ControlNetModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # random zero convs too, so residuals are not all zero
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "controlnet"
    folder.mkdir()
    save_file(tiny_state_dict(1), str(folder / "pose.safetensors"))
    save_file(tiny_state_dict(2), str(folder / "depth.safetensors"))
    return folder


@pytest.fixture
def nodes(monkeypatch, folder):
    return import_nodes(monkeypatch, folder)


class FakeModelSampling:
    """Sigma → UNet input scaling and timestep, as the host's eps model_sampling does (independent numbers)."""

    def calculate_input(self, sigma, x):
        return x / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1.0) ** 0.5

    def timestep(self, sigma):
        return sigma * 50.0

    def percent_to_sigma(self, percent):
        return SIGMAS[0] + (SIGMAS[1] - SIGMAS[0]) * percent


def fake_base_model(unet_config=None, name="SD15"):
    model_config = type(name, (), {"unet_config": unet_config or TINY_UNET_CONFIG})()
    return SimpleNamespace(model_sampling=FakeModelSampling(), model_config=model_config)


class RecordingControl:
    """A control some other pack put on the conditioning: returns fixed residuals and records calls."""

    def __init__(self, value: float):
        self.value, self.calls, self.previous_controlnet = value, 0, None

    def get_control(self, x, t, cond, batched_number, transformer_options):
        self.calls += 1
        return {"input": [], "middle": [torch.full((x.shape[0], 64, 2, 2), self.value)],
                "output": [torch.full((x.shape[0], 32, 4, 4), self.value)] + [None] * 3}

    def pre_run(self, model, fn):
        pass

    def cleanup(self):
        pass

    def get_models(self):
        return ["other-pack-model"]

    def inference_memory_requirements(self, dtype):
        return 123


def run_control(control, x, sigma, cond_or_uncond=(0, 1)):
    control.pre_run(fake_base_model(), FakeModelSampling().percent_to_sigma)
    context = torch.randn(x.shape[0], 5, 768, generator=torch.Generator().manual_seed(3))
    t = torch.full((x.shape[0],), sigma)
    out = control.get_control(x, t, {"c_crossattn": context}, len(cond_or_uncond),
                              {"cond_or_uncond": list(cond_or_uncond)})
    return out, context, t


def direct_residuals(model, image, x, context, t, cond_or_uncond, **entry_kwargs):
    """The same computation straight through controlnet_core, with the host's input transforms."""
    ms = FakeModelSampling()
    core = importlib.import_module("pack_under_test.controlnet_core")  # the copy the nodes imported
    stack = core.ControlStack([core.ControlEntry(model=model, image=image, **entry_kwargs)])
    return stack.residuals(ms.calculate_input(t, x), ms.timestep(t), context, chunk_kinds=list(cond_or_uncond))


def conditioning(previous=None):
    meta = {"pooled_output": None}
    if previous is not None:
        meta["control"] = previous
    return [[torch.zeros(1, 5, 768), meta]]


def test_names_resolve_only_inside_the_controlnet_folder(nodes, folder):
    assert nodes.resolve_controlnet_path("pose.safetensors") == str(folder / "pose.safetensors")
    with pytest.raises(nodes.InputError, match="outside ComfyUI's controlnet folder"):
        nodes.resolve_controlnet_path("../../pose.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors.*controlnet folder"):
        nodes.resolve_controlnet_path("missing.safetensors")


def test_loading_the_same_file_twice_reuses_the_weights(nodes):
    first, = nodes.LoadControlNet().load("pose.safetensors")
    second, = nodes.LoadControlNet().load("pose.safetensors")
    other, = nodes.LoadControlNet().load("depth.safetensors")
    assert first.source is second.source and first.source.model is second.source.model
    assert other.source.model is not first.source.model
    assert first.get_models() == []  # not applied yet: nothing for the memory manager


def test_apply_shares_one_object_and_sums_previous_control(nodes):
    control_net, = nodes.LoadControlNet().load("pose.safetensors")
    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(5))
    previous = RecordingControl(0.5)
    positive, negative = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), control_net,
                                                       image, 0.8, 0.0, 1.0)
    control = positive[0][1]["control"]
    assert control is negative[0][1]["control"]  # cond and uncond batch into one call
    assert control.previous_controlnet is previous
    assert positive[0][1]["control_apply_to_uncond"] is False
    assert previous.get_models()[0] in control.get_models() and control_net.source.patcher in control.get_models()

    x = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(6))
    out, context, t = run_control(control, x, 5.0)
    ours = direct_residuals(control_net.source.model, image, x, context, t, (0, 1), strength=0.8)
    assert previous.calls == 1
    torch.testing.assert_close(out["output"][0], ours.down[0] + 0.5)
    torch.testing.assert_close(out["output"][1], ours.down[1])
    torch.testing.assert_close(out["middle"][0], ours.mid + 0.5)
    assert len(out["output"]) == TINY.num_down_residuals


def test_step_range_uses_host_sigma_semantics(nodes):
    control_net, = nodes.LoadControlNet().load("pose.safetensors")
    image = torch.rand(1, 32, 32, 3)
    previous = RecordingControl(0.25)
    positive, _ = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), control_net, image,
                                                1.0, 0.5, 1.0)
    control = positive[0][1]["control"]
    x = torch.randn(2, 4, LATENT, LATENT)
    sigma_half = FakeModelSampling().percent_to_sigma(0.5)
    early, _, _ = run_control(control, x, sigma_half + 0.1)  # before start: only the previous control
    assert torch.equal(early["middle"][0], torch.full_like(early["middle"][0], 0.25))
    at_start, _, _ = run_control(control, x, sigma_half)
    assert not torch.equal(at_start["middle"][0], early["middle"][0])


def test_host_apply_node_path_matches_ours(nodes):
    """The host's Apply ControlNet does control_net.copy().set_cond_hint(hint BCHW, strength, range)."""
    control_net, = nodes.LoadControlNet().load("depth.safetensors")
    image = torch.rand(1, 32, 40, 3, generator=torch.Generator().manual_seed(8))
    host_style = control_net.copy().set_cond_hint(image.movedim(-1, 1), 0.6, (0.0, 1.0))
    ours, _ = nodes.ApplyControlNet().apply(conditioning(), conditioning(), control_net, image, 0.6, 0.0, 1.0)
    x = torch.randn(2, 4, LATENT, LATENT)
    a, _, _ = run_control(host_style, x, 2.0)
    b, _, _ = run_control(ours[0][1]["control"], x, 2.0)
    for left, right in zip(a["output"] + a["middle"], b["output"] + b["middle"]):
        torch.testing.assert_close(left, right)


def test_multicontrolstack_entries_switch_and_chain(nodes):
    pose, = nodes.LoadControlNet().load("pose.safetensors")
    depth, = nodes.LoadControlNet().load("depth.safetensors")
    image = torch.rand(1, 32, 32, 3)
    node = nodes.MultiControlStack()
    common = {f"{k}_{i}": v for i in (1, 2, 3) for k, v in
              (("strength", 1.0), ("start_percent", 0.0), ("end_percent", 1.0), ("control_mode", "balanced"))}
    _, _, stack = node.apply(**common, enabled_1=True, enabled_2=False, enabled_3=True,
                             control_net_1=pose, image_1=image, control_net_2=depth, image_2=image)
    assert [unit.net for unit in stack] == [pose.source]  # entry 2 is off, entry 3 is empty
    positive, negative, chained = node.apply(conditioning(), conditioning(), stack, **common, enabled_1=True,
                                             enabled_2=True, enabled_3=True, control_net_1=depth, image_1=image)
    assert [unit.net for unit in chained] == [pose.source, depth.source]
    control = positive[0][1]["control"]
    assert control is negative[0][1]["control"] and len(control.units) == 2
    with pytest.raises(nodes.InputError, match="entry 2: image_2 is not connected"):
        node.apply(**common, enabled_1=True, enabled_2=True, enabled_3=True, control_net_2=pose)


def test_stack_equals_two_chained_apply_nodes(nodes):
    pose, = nodes.LoadControlNet().load("pose.safetensors")
    depth, = nodes.LoadControlNet().load("depth.safetensors")
    pose_image, depth_image = torch.rand(1, 32, 32, 3), torch.rand(1, 48, 32, 3)
    apply = nodes.ApplyControlNet()
    p1, n1 = apply.apply(conditioning(), conditioning(), pose, pose_image, 0.9, 0.0, 1.0)
    p2, _ = apply.apply(p1, n1, depth, depth_image, 0.7, 0.0, 1.0)
    stack_positive, _, _ = nodes.MultiControlStack().apply(
        conditioning(), conditioning(), None, enabled_1=True, strength_1=0.9, start_percent_1=0.0, end_percent_1=1.0,
        control_mode_1="balanced", control_net_1=pose, image_1=pose_image, enabled_2=True, strength_2=0.7,
        start_percent_2=0.0, end_percent_2=1.0, control_mode_2="balanced", control_net_2=depth, image_2=depth_image,
        enabled_3=False, strength_3=1.0, start_percent_3=0.0, end_percent_3=1.0, control_mode_3="balanced")
    x = torch.randn(2, 4, LATENT, LATENT)
    chained, _, _ = run_control(p2[0][1]["control"], x, 4.0)
    stacked, _, _ = run_control(stack_positive[0][1]["control"], x, 4.0)
    for left, right in zip(chained["output"] + chained["middle"], stacked["output"] + stacked["middle"]):
        torch.testing.assert_close(left, right)


def test_controlnet_that_does_not_fit_the_unet_names_both(nodes, folder):
    control_net, = nodes.LoadControlNet().load("pose.safetensors")
    positive, _ = nodes.ApplyControlNet().apply(conditioning(), conditioning(), control_net, torch.rand(1, 32, 32, 3),
                                                1.0, 0.0, 1.0)
    wide_unet = dict(TINY_UNET_CONFIG, model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"ControlNet 'pose.safetensors' \(SD1.x\) does not fit the base model SD15"):
        positive[0][1]["control"].pre_run(fake_base_model(wide_unet), FakeModelSampling().percent_to_sigma)


def test_image_batch_that_does_not_pair_with_the_latents_fails_clearly(nodes):
    control_net, = nodes.LoadControlNet().load("pose.safetensors")
    positive, _ = nodes.ApplyControlNet().apply(conditioning(), conditioning(), control_net, torch.rand(3, 32, 32, 3),
                                                1.0, 0.0, 1.0)
    with pytest.raises(nodes.InputError, match="batch of 3 does not pair with the latent batch of 4"):
        run_control(positive[0][1]["control"], torch.randn(8, 4, LATENT, LATENT), 3.0)


def test_cleanup_drops_cached_state_and_chains(nodes):
    control_net, = nodes.LoadControlNet().load("pose.safetensors")
    previous = RecordingControl(1.0)
    cleaned = []
    previous.cleanup = lambda: cleaned.append(True)
    positive, _ = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), control_net,
                                                torch.rand(1, 32, 32, 3), 1.0, 0.0, 1.0)
    control = positive[0][1]["control"]
    run_control(control, torch.randn(2, 4, LATENT, LATENT), 3.0)
    control.cleanup()
    assert cleaned == [True] and control._stack is None
    assert control.inference_memory_requirements(torch.float32) == 123


def test_works_under_inference_mode_like_the_host(nodes):
    """The host runs nodes and the sampler under torch.inference_mode(): images, masks and weights
    made there are inference tensors, which lack the version counter a cache key might read."""
    with torch.inference_mode():
        control_net, = nodes.LoadControlNet().load("pose.safetensors")
        image, mask = torch.rand(1, 32, 32, 3), torch.ones(1, 32, 32)
        positive, _ = nodes.ApplyControlNet().apply(conditioning(), conditioning(), control_net, image, 1.0, 0.0, 1.0,
                                                    mask=mask)
        out, _, _ = run_control(positive[0][1]["control"], torch.randn(2, 4, LATENT, LATENT), 3.0)
    assert torch.count_nonzero(out["middle"][0]) > 0


def test_control_the_core_cannot_run_stays_on_the_host_path(nodes):
    """E.g. a T2I-Adapter from the host's loader: chained like the host's apply node; no mask or mode."""
    import comfy.controlnet  # the stub, installed by the nodes fixture

    class Adapter(comfy.controlnet.ControlBase):
        def copy(self):
            copied = Adapter()
            self.copy_to(copied)
            return copied

    adapter, image = Adapter(), torch.rand(1, 32, 32, 3)
    previous = RecordingControl(0.1)
    positive, negative = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), adapter, image,
                                                       0.7, 0.2, 0.9)
    control = positive[0][1]["control"]
    assert type(control) is Adapter and control is negative[0][1]["control"]
    assert control.previous_controlnet is previous and control.strength == 0.7
    assert control.timestep_percent_range == (0.2, 0.9)
    assert torch.equal(control.cond_hint_original, image.movedim(-1, 1))
    with pytest.raises(nodes.InputError, match="no mask, control mode or resize mode"):
        nodes.ApplyControlNet().apply(conditioning(), conditioning(), adapter, image, 1.0, 0.0, 1.0,
                                      mask=torch.ones(32, 32))
