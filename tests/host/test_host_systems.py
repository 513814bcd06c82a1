"""T2I-Adapters and ControlNeXt inside a running ComfyUI server, against the host's own path.

- T2I-Adapter (full SD1.5 and light, original layout): our LoadControlNet + ApplyControlNet and the
  host's ControlNetLoader + ControlNetApplyAdvanced give the same KSampler latent, bit for bit (the
  adapter's features are computed identically and added at the same blocks).
- A diffusers-layout light adapter, which the host's loader cannot read, runs through ours.
- ControlNeXt (SD1.5 module with its UNet weight deltas): the prompt runs and changes the latent,
  the UNet weights do act, and the next prompt without it gives the uncontrolled latent bit for bit:
  the weight patches are gone.
The SDXL adapters are checked against diffusers in CI (tests/test_t2i_adapter.py): a full-size SDXL
base model is beyond this CPU host test's budget.
"""
from __future__ import annotations

import torch

import host_env
from test_host_server import OURS, POSE, base_prompt, latent_of, relative_difference, with_host_controls, \
    with_our_apply

T2I_FULL = host_env.MODEL_FILES["t2i_full"][1]
T2I_LIGHT = host_env.MODEL_FILES["t2i_light"][1]
T2I_LIGHT_DIFFUSERS = host_env.MODEL_FILES["t2i_light_diffusers"][1]
CONTROLNEXT = host_env.MODEL_FILES["controlnext"][1]
CONTROLNEXT_UNET = host_env.MODEL_FILES["controlnext_unet"][1]


def test_t2i_adapters_give_the_hosts_latent_bit_for_bit(server):
    for adapter in (T2I_FULL, T2I_LIGHT):
        host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=2), [(adapter, "depth_image",
                                                                                              0.8)])))
        ours = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=2), adapter, "depth_image", 0.8)))
        plain = latent_of(server, server.run_prompt(base_prompt(steps=2)))
        assert torch.equal(ours, host), f"{adapter}: {relative_difference(ours, host):.2e} from the host"
        # Random weights move this random model's latents (values ~100) by a few parts per thousand.
        assert relative_difference(ours, plain) > 1e-3, f"{adapter}: the adapter does not change the latent"


def test_host_loaded_adapter_in_our_apply_node_runs_through_our_core(server):
    prompt = with_host_controls(base_prompt(steps=2), [(T2I_FULL, "depth_image", 0.8)])
    reference = latent_of(server, server.run_prompt(prompt))
    prompt["host_apply_0"] = {"class_type": f"{OURS}ApplyControlNet", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["host_load_0", 0], "image": ["depth_image", 0],
        "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0, "mask": ["half_mask", 0]}}
    prompt["half_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 256, "height": 256}}
    masked = server.run_prompt(prompt)  # a mask: only possible on our path
    assert masked["ok"], masked["error"]
    assert relative_difference(latent_of(server, masked), reference) > 1e-3


def test_diffusers_light_adapter_the_host_cannot_load_runs_here(server):
    host = server.run_prompt(with_host_controls(base_prompt(steps=1), [(T2I_LIGHT_DIFFUSERS, "depth_image", 0.8)]))
    assert not host["ok"]  # the host's rename covers only two blocks per level and the full adapter's names
    ours = server.run_prompt(with_our_apply(base_prompt(steps=1), T2I_LIGHT_DIFFUSERS, "depth_image", 0.8))
    original = server.run_prompt(with_our_apply(base_prompt(steps=1), T2I_LIGHT, "depth_image", 0.8))
    assert torch.equal(latent_of(server, ours), latent_of(server, original))  # same weights, other layout


def with_controlnext(prompt: dict, unet_weights: str = "none", strength: float = 1.0) -> dict:
    prompt = with_our_apply(prompt, CONTROLNEXT, "depth_image", strength)
    prompt["our_load"]["inputs"].update(unet_weights=unet_weights, unet_weights_kind="auto")
    return prompt


def test_controlnext_changes_the_latent_and_its_weight_patches_leave_with_it(server):
    before = latent_of(server, server.run_prompt(base_prompt(steps=2)))
    with_weights = latent_of(server, server.run_prompt(with_controlnext(base_prompt(steps=2), CONTROLNEXT_UNET)))
    module_only = latent_of(server, server.run_prompt(with_controlnext(base_prompt(steps=2))))
    after = latent_of(server, server.run_prompt(base_prompt(steps=2)))
    assert relative_difference(module_only, before) > 1e-3  # the module's feature acts
    assert relative_difference(with_weights, module_only) > 1e-3  # the UNet weights act too
    assert torch.equal(after, before)  # and are gone for the next prompt


def test_mixed_stack_of_a_controlnet_an_adapter_and_controlnext_runs(server):
    inputs = {"positive": ["pos", 0], "negative": ["neg", 0]}
    for slot, (name, image, strength) in enumerate(((POSE, "pose_image", 0.8), (T2I_FULL, "depth_image", 0.6),
                                                    (CONTROLNEXT, "depth_image", 0.5)), start=1):
        inputs.update({f"enabled_{slot}": True, f"strength_{slot}": strength, f"start_percent_{slot}": 0.0,
                       f"end_percent_{slot}": 1.0, f"control_mode_{slot}": "balanced",
                       f"control_net_{slot}": [f"load_{slot}", 0], f"image_{slot}": [image, 0]})
    prompt = base_prompt(steps=1)
    for slot, name in enumerate((POSE, T2I_FULL, CONTROLNEXT), start=1):
        prompt[f"load_{slot}"] = {"class_type": f"{OURS}LoadControlNet", "inputs": {"control_net_name": name}}
    prompt["stack"] = {"class_type": f"{OURS}MultiControlStack", "inputs": inputs}
    prompt["sampler"]["inputs"].update(positive=["stack", 0], negative=["stack", 1])
    result = server.run_prompt(prompt)
    assert result["ok"], result["error"]
    assert "control could not be applied" not in server.log()


def test_files_the_pack_does_not_run_fail_the_prompt_naming_the_system(server):
    prompt = with_our_apply(base_prompt(steps=1), CONTROLNEXT_UNET, "depth_image", 1.0)
    result = server.run_prompt(prompt)
    assert not result["ok"] and "UNet weight subset" in result["error"]
    assert server.run_prompt(base_prompt(steps=1))["ok"]
