"""Shuffle and diff ControlNets inside a running ComfyUI server, against the host's own path.

- Shuffle: a ControlNet file named like control_v11e_sd15_shuffle. The host pools it (it goes by the
  file name too) but applies it to whatever conditioning it is put on; the original controls the
  positive side only. The host's path reproduces the original when only the positive output of its
  ControlNetApplyAdvanced reaches the sampler: our loader + apply node (both outputs wired) must give
  that latent. Forcing pooling off on our loader must give the host's unpooled latent with the same
  weights under another name.
- diff: a diff ControlNet (fp16 deltas on the checkpoint's UNet, `difference` key), the host's
  DiffControlNetLoader against our LoadControlNet with its `model` input; without the model the
  prompt fails naming that input.
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from test_host_server import (LATENT_TOLERANCE, OURS, POSE, base_prompt, latent_of, relative_difference,
                              with_host_controls, with_our_apply)

SHUFFLE = "control_v11e_sd15_shuffle.safetensors"
DIFF = "diff_control_sd15_depth_fp16.safetensors"


@pytest.fixture(scope="module")
def files(server, host_weights):
    """The shuffle file (the pose weights under a shuffle name) and a diff file built from the depth
    ControlNet and the checkpoint's UNet, in the server's controlnet folder."""
    folder = server.base / "models" / "controlnet"
    if not (folder / SHUFFLE).exists():
        (folder / SHUFFLE).symlink_to(host_weights["pose"])
    if not (folder / DIFF).exists():
        deltas = {"difference": torch.tensor([])}
        with safe_open(str(host_weights["depth"]), "pt") as control, safe_open(str(host_weights["checkpoint"]),
                                                                                 "pt") as checkpoint:
            unet_keys = set(checkpoint.keys())
            for key in control.keys():
                tensor = control.get_tensor(key)
                base_key = "model.diffusion_model." + key[len("control_model."):]
                if base_key in unet_keys:
                    tensor = tensor.float() - checkpoint.get_tensor(base_key).float()
                deltas[key] = tensor.half().contiguous()
        save_file(deltas, str(folder / DIFF))
    return folder


def host_positive_only(prompt: dict, name: str, image: str, strength: float) -> dict:
    """The host's loader and ControlNetApplyAdvanced, with only its positive output used."""
    prompt = with_host_controls(prompt, [(name, image, strength)])
    prompt["sampler"]["inputs"]["negative"] = ["neg", 0]
    return prompt


def test_shuffle_pools_on_the_positive_side_only_like_the_original(server, files):
    host = latent_of(server, server.run_prompt(host_positive_only(base_prompt(steps=1), SHUFFLE, "pose_image", 0.9)))
    ours = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=1), SHUFFLE, "pose_image", 0.9)))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=1)))
    assert relative_difference(ours, plain) > 100 * LATENT_TOLERANCE  # the control does change the result
    assert relative_difference(ours, host) <= LATENT_TOLERANCE

    # The host's loader output in our apply node runs through our core, pooled and positive-only too.
    prompt = host_positive_only(base_prompt(steps=1), SHUFFLE, "pose_image", 0.9)
    prompt["host_apply_0"]["class_type"] = f"{OURS}ApplyControlNet"
    prompt["sampler"]["inputs"]["negative"] = ["host_apply_0", 1]
    assert relative_difference(latent_of(server, server.run_prompt(prompt)), host) <= LATENT_TOLERANCE


def test_pooling_forced_off_gives_the_hosts_unpooled_latent(server, files):
    prompt = with_our_apply(base_prompt(steps=1), SHUFFLE, "pose_image", 0.9)
    prompt["our_load"]["inputs"]["global_average_pooling"] = "off"
    unpooled = latent_of(server, server.run_prompt(prompt))
    host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=1), [(POSE, "pose_image", 0.9)])))
    assert relative_difference(unpooled, host) <= LATENT_TOLERANCE


def test_diff_controlnet_with_the_model_input_matches_the_hosts_diff_loader(server, files):
    prompt = with_host_controls(base_prompt(steps=1), [(DIFF, "depth_image", 0.8)])
    prompt["host_load_0"] = {"class_type": "DiffControlNetLoader",
                             "inputs": {"model": ["ckpt", 0], "control_net_name": DIFF}}
    host = latent_of(server, server.run_prompt(prompt))
    prompt = with_our_apply(base_prompt(steps=1), DIFF, "depth_image", 0.8)
    missing = server.run_prompt(prompt)
    assert not missing["ok"] and "`model` input" in missing["error"] and DIFF in missing["error"], missing["error"]
    prompt["our_load"]["inputs"]["model"] = ["ckpt", 0]
    ours = latent_of(server, server.run_prompt(prompt))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=1)))
    assert relative_difference(ours, plain) > 100 * LATENT_TOLERANCE
    assert relative_difference(ours, host) <= LATENT_TOLERANCE
