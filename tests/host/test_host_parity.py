"""Residual parity in-process: our nodes vs the host's ControlNetApplyAdvanced on the same file and image.

fp32 on CPU, full-size SD1.5 ControlNets with random weights, latent 32×32, cond + uncond batched
as the sampler does. The host object and ours get the same x, sigma and context; their
get_control outputs must agree within 1e-5 (max abs difference relative to the residual's scale).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import host_env

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def host(comfy_path, host_weights):
    import comfy.controlnet
    import comfy.model_base
    import comfy.supported_models
    import folder_paths
    import nodes as host_nodes
    import weights

    folder_paths.add_model_folder_path("controlnet", str(host_weights["pose"].parent))
    model_config = comfy.supported_models.SD15(dict(weights.SD15_UNET))
    sampling = comfy.model_base.model_sampling(model_config, comfy.model_base.ModelType.EPS)
    pack = host_env.import_pack_in_process()
    ours = pack.nodes.controlnet_nodes
    # Loaded once: each host load of a full-size ControlNet takes seconds.
    loaded = {key: comfy.controlnet.load_controlnet(str(host_weights[key])) for key in ("pose", "depth")}
    return SimpleNamespace(controlnet=comfy.controlnet, nodes=host_nodes, ours=ours, weights=host_weights,
                           host_nets=loaded,
                           base_model=SimpleNamespace(model_sampling=sampling, model_config=model_config))


def control_inputs(seed: int = 0, batch: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * batch, 4, 32, 32, generator=generator)
    context = torch.randn(2 * batch, 77, 768, generator=generator)
    return x, context


def conditioning():
    return [[torch.zeros(1, 77, 768), {"pooled_output": None}]]


def run(host, positive, sigma: float, seed: int = 0):
    control = positive[0][1]["control"]
    sampling = host.base_model.model_sampling
    control.pre_run(host.base_model, lambda percent: sampling.percent_to_sigma(percent))
    x, context = control_inputs(seed)
    t = torch.full((x.shape[0],), sigma)
    try:
        with torch.inference_mode():  # as the host's sampler calls it
            return control.get_control(x, t, {"c_crossattn": context}, 2, {"cond_or_uncond": [0, 1]})
    finally:
        control.cleanup()


def assert_residuals_match(ours: dict, theirs: dict) -> float:
    pairs = list(zip(ours["output"], theirs["output"])) + list(zip(ours["middle"], theirs["middle"]))
    assert len(ours["output"]) == len(theirs["output"]) == 12 and len(pairs) == 13
    worst = 0.0
    for index, (a, b) in enumerate(pairs):
        assert a.shape == b.shape, f"residual {index}: {tuple(a.shape)} vs {tuple(b.shape)}"
        scale = b.abs().max().item()
        assert scale > 0, f"residual {index} is all zero: the test would prove nothing"
        error = (a - b).abs().max().item() / scale
        worst = max(worst, error)
        assert error <= TOLERANCE, f"residual {index}: relative max error {error:.2e} > {TOLERANCE}"
    return worst


def image(seed: int, height: int = 256, width: int = 320) -> torch.Tensor:
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pose_sigma(host):
    return float(host.base_model.model_sampling.percent_to_sigma(0.3))


POSE_STRENGTH, DEPTH_STRENGTH = 0.8, 0.5


@pytest.fixture(scope="module")
def images():
    return {"pose": image(1), "depth": image(5, 320, 256)}


@pytest.fixture(scope="module")
def host_pose(host, images, pose_sigma):
    """The host's ControlNetApplyAdvanced with the pose net: the reference for single-control tests."""
    positive, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(), conditioning(), host.host_nets["pose"], images["pose"], POSE_STRENGTH, 0.0, 1.0)
    return run(host, positive, pose_sigma)


@pytest.fixture(scope="module")
def host_pose_depth(host, images, pose_sigma):
    """Two chained host apply nodes (pose, then depth): the reference for stacks and mixed chains."""
    apply_host = host.nodes.ControlNetApplyAdvanced().apply_controlnet
    p, n = apply_host(conditioning(), conditioning(), host.host_nets["pose"], images["pose"], POSE_STRENGTH, 0.0, 1.0)
    positive, negative = apply_host(p, n, host.host_nets["depth"], images["depth"], DEPTH_STRENGTH, 0.0, 1.0)
    return {"residuals": run(host, positive, pose_sigma), "after_pose": (p, n)}


def test_our_nodes_match_host_apply_node(host, images, pose_sigma, host_pose):
    our_net, = host.ours.LoadControlNet().load(host.weights["pose"].name)
    ours, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), our_net, images["pose"],
                                                POSE_STRENGTH, 0.0, 1.0)
    assert_residuals_match(run(host, ours, pose_sigma), host_pose)


def test_host_loader_object_in_our_apply_node(host, images, pose_sigma, host_pose):
    host_net = host.nodes.ControlNetLoader().load_controlnet(host.weights["pose"].name)[0]
    ours, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), host_net, images["pose"],
                                                POSE_STRENGTH, 0.0, 1.0)
    control = ours[0][1]["control"]
    assert type(control).__name__ == "PackControl"  # run through our core, not the host fallback
    assert_residuals_match(run(host, ours, pose_sigma), host_pose)


def test_our_loader_object_in_host_apply_node(host, images, pose_sigma, host_pose):
    our_net, = host.ours.LoadControlNet().load(host.weights["pose"].name)
    via_host_node, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(), conditioning(), our_net, images["pose"], POSE_STRENGTH, 0.0, 1.0)
    assert_residuals_match(run(host, via_host_node, pose_sigma), host_pose)


def test_pose_depth_stack_matches_two_chained_host_nodes(host, images, pose_sigma, host_pose_depth):
    pose, = host.ours.LoadControlNet().load(host.weights["pose"].name)
    depth, = host.ours.LoadControlNet().load(host.weights["depth"].name)
    slots = {"enabled_1": True, "strength_1": POSE_STRENGTH, "start_percent_1": 0.0, "end_percent_1": 1.0,
             "control_mode_1": "balanced", "control_net_1": pose, "image_1": images["pose"],
             "enabled_2": True, "strength_2": DEPTH_STRENGTH, "start_percent_2": 0.0, "end_percent_2": 1.0,
             "control_mode_2": "balanced", "control_net_2": depth, "image_2": images["depth"],
             "enabled_3": False, "strength_3": 1.0, "start_percent_3": 0.0, "end_percent_3": 1.0,
             "control_mode_3": "balanced"}
    ours, _, _ = host.ours.MultiControlStack().apply(conditioning(), conditioning(), None, **slots)
    assert_residuals_match(run(host, ours, pose_sigma), host_pose_depth["residuals"])


def test_host_control_already_on_conditioning_keeps_working(host, images, pose_sigma, host_pose_depth):
    """Host node first, our node second: the chain sums both, like two host nodes."""
    p, n = host_pose_depth["after_pose"]
    depth, = host.ours.LoadControlNet().load(host.weights["depth"].name)
    mixed, mixed_negative = host.ours.ApplyControlNet().apply(p, n, depth, images["depth"], DEPTH_STRENGTH, 0.0, 1.0)
    assert mixed[0][1]["control"] is mixed_negative[0][1]["control"]
    assert mixed[0][1]["control"].previous_controlnet is p[0][1]["control"]
    assert_residuals_match(run(host, mixed, pose_sigma), host_pose_depth["residuals"])


def test_models_are_handed_to_the_memory_manager(host, images):
    import comfy.model_patcher

    our_net, = host.ours.LoadControlNet().load(host.weights["depth"].name)
    again, = host.ours.LoadControlNet().load(host.weights["depth"].name)
    assert again.source is our_net.source  # same file twice: same weights
    positive, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), our_net, images["depth"], 1.0,
                                                    0.0, 1.0)
    models = positive[0][1]["control"].get_models()
    assert len(models) == 1 and isinstance(models[0], comfy.model_patcher.ModelPatcher)
    assert models[0].model.control_model is our_net.source.model
    assert next(models[0].model.parameters()).dtype == torch.float32  # what the host picks for the CPU


def test_fast_mode_reuses_every_other_step_of_the_hosts_calls(host, images):
    """speed_mode "fast: reuse 2 steps" in the host's control protocol: four steps (sigmas falling, new
    latents each step) give the host's residuals of steps 0, 0, 2, 2."""
    sampling = host.base_model.model_sampling
    sigmas = [float(sampling.percent_to_sigma(p)) for p in (0.0, 0.25, 0.5, 0.75)]
    our_net, = host.ours.LoadControlNet().load(host.weights["pose"].name)
    ours, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), our_net, images["pose"], POSE_STRENGTH,
                                                0.0, 1.0, speed_mode="fast: reuse 2 steps")
    theirs, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(), conditioning(), host.host_nets["pose"], images["pose"], POSE_STRENGTH, 0.0, 1.0)
    controls = [positive[0][1]["control"] for positive in (ours, theirs)]
    for control in controls:
        control.pre_run(host.base_model, lambda percent: sampling.percent_to_sigma(percent))
    x, context = control_inputs(3)
    results = []
    try:
        with torch.inference_mode():
            for step, sigma in enumerate(sigmas):
                call = (x + step, torch.full((x.shape[0],), sigma), {"c_crossattn": context}, 2,
                        {"cond_or_uncond": [0, 1]})
                results.append([control.get_control(*call) for control in controls])
    finally:
        for control in controls:
            control.cleanup()
    host_step_0, host_step_1 = results[0][1]["middle"][0], results[1][1]["middle"][0]
    assert (host_step_1 - host_step_0).abs().max() > 1e-2 * host_step_0.abs().max()  # the steps differ
    for step, computed_at in ((0, 0), (1, 0), (2, 2), (3, 2)):
        assert_residuals_match(results[step][0], results[computed_at][1])
