"""Union ControlNet against the host's own path, in process: one control type (and "auto") through the
host's loader, SetUnionControlNetType and ControlNetApplyAdvanced vs the pack's loader and nodes.

The file is written in the released diffusers layout from a host-built union ControlNet with random
weights (its names mapped with the host's own diffusers table). It is small (320 channels, as the
host's union parts require, two levels of one res block): the host's diffusers detector knows only
the released sizes, so the test hands it this config's numbers; the key conversion, the union
model, the control-type node and the apply node are the host's own. cond and uncond rows share one
hint, so the host's attention over tokens and the released attention across rows (ours) agree;
residuals must match within 1e-5 of their scale (the attention kernels differ).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import host_env

TOLERANCE = 1e-5
LATENT = 16
CONFIG = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
          "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
          "model_channels": 320, "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "channel_mult": [1, 1],
          "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 64,
          "num_head_channels": 64, "transformer_depth_output": [0, 0, 1, 1],
          "use_temporal_attention": False, "use_temporal_resblock": False}


@pytest.fixture(scope="module")
def host(comfy_path, tmp_path_factory):
    import comfy.controlnet
    import comfy.model_base
    import comfy.model_detection
    import comfy.supported_models
    import folder_paths
    import nodes as host_nodes
    from comfy_extras.nodes_controlnet import SetUnionControlNetType
    from safetensors.torch import save_file
    from weights import union_diffusers_state_dict

    folder = tmp_path_factory.mktemp("union")
    path = folder / "union_promax_tiny.safetensors"
    save_file(union_diffusers_state_dict(CONFIG, types=8, seed=7), str(path))
    folder_paths.add_model_folder_path("controlnet", str(folder))

    detector = comfy.model_detection.unet_config_from_diffusers_unet
    comfy.model_detection.unet_config_from_diffusers_unet = lambda *args, **kwargs: dict(CONFIG)
    try:
        host_net = comfy.controlnet.load_controlnet(str(path))
    finally:
        comfy.model_detection.unet_config_from_diffusers_unet = detector
    model_config = comfy.supported_models.SDXL(dict(CONFIG))
    sampling = comfy.model_base.model_sampling(model_config, comfy.model_base.ModelType.EPS)
    pack = host_env.import_pack_in_process()
    return SimpleNamespace(nodes=host_nodes, ours=pack.nodes.controlnet_nodes, host_net=host_net, path=path,
                           set_type=lambda net, name: SetUnionControlNetType().set_controlnet_type(net, name)[0],
                           base_model=SimpleNamespace(model_sampling=sampling, model_config=model_config))


def conditioning():
    return [[torch.zeros(1, 77, 64), {"pooled_output": None}]]


def run(host, positive, percent: float = 0.3):
    control = positive[0][1]["control"]
    sampling = host.base_model.model_sampling
    control.pre_run(host.base_model, lambda p: sampling.percent_to_sigma(p))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, LATENT, LATENT, generator=generator)
    context = torch.randn(2, 7, 64, generator=generator)
    y = torch.randn(2, 2816, generator=generator)
    t = torch.full((2,), float(sampling.percent_to_sigma(percent)))
    try:
        with torch.inference_mode():
            return control.get_control(x, t, {"c_crossattn": context, "y": y}, 2, {"cond_or_uncond": [0, 1]})
    finally:
        control.cleanup()


def assert_match(ours: dict, theirs: dict) -> None:
    pairs = list(zip(ours["output"], theirs["output"])) + list(zip(ours["middle"], theirs["middle"]))
    assert len(pairs) == 5
    for index, (a, b) in enumerate(pairs):
        scale = b.abs().max().item()
        assert scale > 0, f"residual {index} is zero: the check would prove nothing"
        error = (a - b).abs().max().item() / scale
        assert error <= TOLERANCE, f"residual {index}: relative max error {error:.2e} > {TOLERANCE}"


IMAGE = torch.rand(1, LATENT * 8, LATENT * 8, 3, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("type_name", ["openpose", "canny/lineart/anime_lineart/mlsd", "tile", "auto"])
def test_one_type_matches_the_hosts_set_union_type_path(host, type_name):
    apply_host = host.nodes.ControlNetApplyAdvanced().apply_controlnet
    theirs, _ = apply_host(conditioning(), conditioning(), host.set_type(host.host_net, type_name), IMAGE, 0.7, 0.0, 1.0)
    expected = run(host, theirs)
    our_net, = host.ours.LoadControlNet().load(host.path.name)
    typed = host.set_type(our_net, type_name)
    ours, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), typed, IMAGE, 0.7, 0.0, 1.0)
    assert type(ours[0][1]["control"]).__name__ == "PackControl"
    assert_match(run(host, ours), expected)
    # Our loader's object through the host's own apply node runs our core with the type too.
    via_host, _ = apply_host(conditioning(), conditioning(), typed, IMAGE, 0.7, 0.0, 1.0)
    assert_match(run(host, via_host), expected)


@pytest.mark.parametrize("type_name", ["depth", "auto"])
def test_host_loaders_union_in_our_apply_node_runs_our_core_with_its_type(host, type_name):
    apply_host = host.nodes.ControlNetApplyAdvanced().apply_controlnet
    typed = host.set_type(host.host_net, type_name)
    theirs, _ = apply_host(conditioning(), conditioning(), typed, IMAGE, 0.7, 0.0, 1.0)
    ours, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), typed, IMAGE, 0.7, 0.0, 1.0)
    control = ours[0][1]["control"]
    assert type(control).__name__ == "PackControl"  # run through our core, not the host fallback
    assert control.units[0].net.model.type_name == ("no type" if type_name == "auto" else type_name)
    assert_match(run(host, ours), run(host, theirs))


def test_two_types_of_one_file_run_in_one_forward_in_a_stack(host):
    our_net, = host.ours.LoadControlNet().load(host.path.name)
    pose, depth = host.set_type(our_net, "openpose"), host.set_type(our_net, "depth")
    slots = {"enabled_1": True, "strength_1": 0.8, "start_percent_1": 0.0, "end_percent_1": 1.0,
             "control_mode_1": "balanced", "control_net_1": pose, "image_1": IMAGE,
             "enabled_2": True, "strength_2": 0.5, "start_percent_2": 0.0, "end_percent_2": 1.0,
             "control_mode_2": "balanced", "control_net_2": depth, "image_2": IMAGE.flip(1),
             "enabled_3": False, "strength_3": 1.0, "start_percent_3": 0.0, "end_percent_3": 1.0,
             "control_mode_3": "balanced"}
    ours, _, _ = host.ours.MultiControlStack().apply(conditioning(), conditioning(), None, **slots)
    network = ours[0][1]["control"].units[0].net.model.network
    calls = []
    handle = network.middle_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        result = run(host, ours)
    finally:
        handle.remove()
    assert len(calls) == 1, "both entries in one forward"
    assert all(r.abs().max() > 0 for r in result["output"])
