"""Per-block weights, keyframes, sparse controls and context windows in the real host.

- A keyframed KSampler run equals the same run split by hand into step ranges (three stack entries),
  bit for bit: hold keyframes switch exactly where the host's own start/end percents switch.
- Weight presets scale the host's own ControlNet residuals (ControlNetApplyAdvanced, same file and
  image) by the documented factors, on the cond and uncond rows (in-process, residuals agree to 1e-5).
- Sparse controls: the frames without a control image come out of the KSampler bit-identical to a
  run without the control.
- A 16-frame batch under the host's own context windows (ContextWindowsManual, windows of 8) pairs
  every frame with its own control frame: the windowed latent equals the unwindowed one, while the
  host's core ControlNet, which gives every window the first 8 frames, does not.
"""
from __future__ import annotations

import host_env
import numpy as np
import pytest
import torch
from PIL import Image

from test_host_parity import TOLERANCE, conditioning, host, images, pose_sigma, run  # noqa: F401 (fixtures)
from test_host_server import OURS, POSE, base_prompt, latent_of, relative_difference, with_host_controls, \
    with_our_apply

WINDOW_FRAMES, WINDOW = 16, 8


def timing_nodes():
    return host_env.import_pack_in_process().nodes.timing_nodes


# ---- keyframes == ranges split by hand ---------------------------------------------------------------

def keyframed_prompt(steps: int) -> dict:
    prompt = with_our_apply(base_prompt(steps=steps), POSE, "pose_image", 1.0, keyframes=["kf_3", 0])
    prompt["deep"] = {"class_type": f"{OURS}ControlWeights", "inputs": {
        "preset": "only the deep skips", "multiplier": 1.0, "uncond_multiplier": 0.5}}
    prompt["half_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 256, "height": 256}}
    prompt["kf_1"] = {"class_type": f"{OURS}TimestepKeyframe", "inputs": {
        "start_percent": 0.0, "strength": 1.0, "interpolation": "hold"}}
    prompt["kf_2"] = {"class_type": f"{OURS}TimestepKeyframe", "inputs": {
        "start_percent": 0.2, "strength": 0.5, "interpolation": "hold", "prev_keyframes": ["kf_1", 0],
        "weights": ["deep", 0]}}
    prompt["kf_3"] = {"class_type": f"{OURS}TimestepKeyframe", "inputs": {
        "start_percent": 0.6, "strength": 0.25, "interpolation": "hold", "prev_keyframes": ["kf_2", 0],
        "mask": ["half_mask", 0]}}
    return prompt


def split_prompt(steps: int) -> dict:
    """The same control as three stack entries whose ranges are the keyframes' spans; each entry
    carries what the keyframe rule makes of it (keyframe 3 inherits keyframe 2's weights)."""
    prompt = base_prompt(steps=steps)
    prompt["our_load"] = {"class_type": f"{OURS}LoadControlNet", "inputs": {"control_net_name": POSE}}
    prompt["deep"] = {"class_type": f"{OURS}ControlWeights", "inputs": {
        "preset": "only the deep skips", "multiplier": 1.0, "uncond_multiplier": 0.5}}
    prompt["half_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 256, "height": 256}}
    inputs = {"positive": ["pos", 0], "negative": ["neg", 0]}
    for slot, (strength, start, end) in enumerate(((1.0, 0.0, 0.2), (0.5, 0.2, 0.6), (0.25, 0.6, 1.0)), start=1):
        inputs.update({f"enabled_{slot}": True, f"strength_{slot}": strength, f"start_percent_{slot}": start,
                       f"end_percent_{slot}": end, f"control_mode_{slot}": "balanced",
                       f"control_net_{slot}": ["our_load", 0], f"image_{slot}": ["pose_image", 0]})
    inputs.update(weights_2=["deep", 0], weights_3=["deep", 0], mask_3=["half_mask", 0])
    prompt["our_stack"] = {"class_type": f"{OURS}MultiControlStack", "inputs": inputs}
    prompt["sampler"]["inputs"].update(positive=["our_stack", 0], negative=["our_stack", 1])
    return prompt


@pytest.fixture(scope="module")
def sd15_sampling(comfy_path):
    import comfy.model_base
    import comfy.supported_models
    import weights

    config = comfy.supported_models.SD15(dict(weights.SD15_UNET))
    return comfy.model_base.model_sampling(config, comfy.model_base.ModelType.EPS)


def test_keyframed_run_equals_the_run_split_by_hand_into_ranges(server, sd15_sampling):
    import comfy.samplers

    steps = 4
    sigmas = comfy.samplers.calculate_sigmas(sd15_sampling, "normal", steps)[:-1]
    boundaries = torch.tensor([sd15_sampling.percent_to_sigma(p) for p in (0.2, 0.6)])
    # No step sits on a boundary (the host's ranges include both ends: there two split entries would
    # both be on), and every keyframe gets at least one step.
    assert not torch.isclose(sigmas[:, None], boundaries[None]).any()
    keyframe_of_step = [int((sigma <= boundaries).sum()) for sigma in sigmas]
    assert set(keyframe_of_step) == {0, 1, 2}, keyframe_of_step
    keyframed = latent_of(server, server.run_prompt(keyframed_prompt(steps)))
    split = latent_of(server, server.run_prompt(split_prompt(steps)))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=steps)))
    assert relative_difference(keyframed, plain) > 1e-3  # the control acts
    assert torch.equal(keyframed, split), f"{relative_difference(keyframed, split):.2e} from the split run"


# ---- weight presets scale the host's residuals as documented -----------------------------------------

PRESETS = {
    # preset: (factor of residual i in encoder order, middle last (i = 12), uncond multiplier)
    "A1111 soft weights": (lambda i: 0.825 ** (12 - i), 1.0),
    "diffusers guess mode": (lambda i: 10.0 ** (-1.0 + i / 12.0), 0.0),  # torch.logspace(-1, 0, 13)
    "only the middle": (lambda i: 1.0 if i == 12 else 0.0, 1.0),
    "only the deep skips": (lambda i: 1.0 if i in (9, 10, 11) else 0.0, 1.0),
}


@pytest.fixture(scope="module")
def host_pose_full(host, images, pose_sigma):
    positive, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(), conditioning(), host.host_nets["pose"], images["pose"], 1.0, 0.0, 1.0)
    return run(host, positive, pose_sigma)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_weight_presets_scale_the_hosts_residuals_as_documented(host, images, pose_sigma, host_pose_full, preset):
    factor, uncond = PRESETS[preset]
    multiplier, uncond_multiplier = 0.5, 0.5
    weights, = timing_nodes().ControlWeightsNode().build(preset, multiplier, uncond_multiplier)
    our_net, = host.ours.LoadControlNet().load(host.weights["pose"].name)
    positive, _ = host.ours.ApplyControlNet().apply(conditioning(), conditioning(), our_net, images["pose"], 1.0,
                                                    0.0, 1.0, weights=weights)
    ours = run(host, positive, pose_sigma)
    theirs = host_pose_full["output"] + host_pose_full["middle"]
    mine = ours["output"] + ours["middle"]
    for i, (a, b) in enumerate(zip(mine, theirs)):
        scale = b.abs().max().item()
        assert scale > 0
        row_factor = torch.tensor([1.0, uncond * uncond_multiplier]).view(2, 1, 1, 1) * factor(i) * multiplier
        expected = b * row_factor  # the control's batch is cond then uncond, as the sampler runs it
        error = 0.0 if a is None else (a - expected).abs().max().item() / scale
        assert a is not None or factor(i) == 0.0
        assert error <= TOLERANCE, f"{preset}, residual {i}: relative error {error:.2e}"


# ---- sparse controls ----------------------------------------------------------------------------------

def test_sparse_control_leaves_the_other_frames_bit_identical(server):
    steps, batch = 2, 4
    sparse = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=steps, batch=batch), POSE,
                                                                "pose_image", 1.0, frame_indices="1")))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=steps, batch=batch)))
    assert torch.equal(sparse[[0, 2, 3]], plain[[0, 2, 3]])
    assert relative_difference(sparse[1], plain[1]) > 1e-3  # the listed frame is controlled


# ---- context windows ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_control(server):
    """A 16-frame control video (a bar moving down the frame) as a GIF that LoadImage reads as a batch."""
    frames = []
    for index in range(WINDOW_FRAMES):
        array = np.zeros((128, 128, 3), np.uint8)
        array[8 * index:8 * index + 8, :] = (255, 255, 255)
        frames.append(Image.fromarray(array))
    frames[0].save(server.base / "input" / "moving_bar.gif", save_all=True, append_images=frames[1:], duration=40,
                   disposal=2, optimize=False)
    return "moving_bar.gif"


def video_prompt(server, control: str, windows: bool, ours: bool) -> dict:
    prompt = base_prompt(steps=1, batch=WINDOW_FRAMES)
    prompt["latent"]["inputs"].update(width=128, height=128)
    prompt["video"] = {"class_type": "LoadImage", "inputs": {"image": control}}
    prompt = with_our_apply(prompt, POSE, "video", 1.0) if ours else with_host_controls(prompt, [(POSE, "video", 1.0)])
    if windows:  # the host's own windowing: windows 0-7 and 8-15, each frame in exactly one, weight 1
        prompt["windows"] = {"class_type": "ContextWindowsManual", "inputs": {
            "model": ["ckpt", 0], "context_length": WINDOW, "context_overlap": 0, "context_schedule": "batched",
            "context_stride": 1, "closed_loop": False, "fuse_method": "flat", "dim": 0}}
        if "freenoise" in server.get("/object_info/ContextWindowsManual")["ContextWindowsManual"]["input"]["required"]:
            prompt["windows"]["inputs"]["freenoise"] = False  # ComfyUI 0.8.0 added it
        prompt["sampler"]["inputs"]["model"] = ["windows", 0]
    return prompt


def test_16_frames_in_windows_of_8_pair_every_frame_with_its_own_control_frame(server, video_control):
    # The host alone first: ComfyUI 0.3.64's context windows cannot run a batch of frames at all
    # (IndexListContextHandler.set_step compares the whole timestep batch with the sigmas; 0.8.0 reads
    # timestep[0]), whatever the control.
    host_windowed_run = server.run_prompt(video_prompt(server, video_control, windows=True, ours=False))
    if not host_windowed_run["ok"] and "must match the size of tensor" in host_windowed_run["error"]:
        pytest.skip("this host's context windows fail on a batch of frames without any control "
                    f"({host_windowed_run['error'][:160]}); fixed in later ComfyUI")
    host_windowed = latent_of(server, host_windowed_run)
    whole = latent_of(server, server.run_prompt(video_prompt(server, video_control, windows=False, ours=True)))
    windowed = latent_of(server, server.run_prompt(video_prompt(server, video_control, windows=True, ours=True)))
    # Without a motion module every frame is computed on its own, so the windowed run is the whole-batch
    # run; only the UNet's batch size differs (16 rows per call instead of 32), which moves the last bits.
    assert relative_difference(windowed, whole) <= 1e-4
    host_whole = latent_of(server, server.run_prompt(video_prompt(server, video_control, windows=False, ours=False)))
    assert relative_difference(host_whole, whole) <= 1e-4  # same pairing as the host without windows
    # The host's core ControlNet gives the second window frames 0-7: far from its own unwindowed run.
    assert relative_difference(host_windowed[WINDOW:], host_whole[WINDOW:]) > 100 * relative_difference(windowed,
                                                                                                         whole)
