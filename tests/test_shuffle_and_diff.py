"""Shuffle ControlNets (global average pooling, positive side only) and diff ControlNets (weights that
are differences from the base UNet), in the core and from the LoadControlNet node.

Oracles:
- shuffle: diffusers' ControlNetModel with `global_pool_conditions=True` (it averages every residual
  over height and width after the zero convs), and its pipelines' guess mode, which that flag forces:
  the ControlNet runs on the conditional half only and the unconditional half gets zeros. The
  original (ControlNet-v1-1-nightly `ControlLDM.apply_model` with `gradio_shuffle.py`'s
  `c_concat: None` for the unconditional prompt) does the same;
- diff: the host's rule written out here (every stored delta plus the base UNet's tensor of the same
  name, summed in the file's dtype), loaded into diffusers' ControlNetModel and run there.
"""
from __future__ import annotations

import pytest
import torch

import controlnet_core
from comfy_stub import import_nodes
from controlnet_core.errors import CheckpointError
from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm, diffusers_unet_encoder_to_ldm
from tests.factories import (diffusers_state_dict, make_diffusers_unet, make_inputs, randomize_, save_state_dict,
                             tiny_config, with_prefix)
from tests.test_diffusers_parity import assert_matches, assert_residuals_match

SD1 = tiny_config("sd1")


def pooled_diffusers_controlnet(seed: int = 21):
    from diffusers import ControlNetModel

    return randomize_(ControlNetModel(global_pool_conditions=True, **SD1.diffusers_kwargs), seed).eval()


def write_ldm(tmp_path, model, name: str):
    return save_state_dict(diffusers_to_ldm(diffusers_state_dict(model)), tmp_path / name)


# ---- shuffle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, pools", [
    ("control_v11e_sd15_shuffle.pth", True),
    ("control_v11e_sd15_shuffle.safetensors", True),
    ("control_v11e_sd15_shuffle_fp16.safetensors", True),
    ("sub/folder/my_shuffle.bin", True),
    ("control_v11e_sd15_shuffled.safetensors", False),
    ("shuffle_control_sd15.safetensors", False),
    ("control_v11p_sd15_canny.pth", False),
    ("control_v11e_sd15_SHUFFLE.pth", False),  # the host's test is case-sensitive
])
def test_shuffle_is_recognised_by_file_name_as_the_host_does(name, pools):
    # The host: os.path.splitext(path)[0] ends with "_shuffle" or "_shuffle_fp16".
    from controlnet_core.controlnet.loader import pools_by_name

    assert pools_by_name(name) is pools


def test_shuffle_controlnet_pools_and_controls_the_positive_side_only(tmp_path):
    """A file named like control_v11e_sd15_shuffle: the stack's residuals equal diffusers' pooled residuals
    broadcast over the feature map on the conditional rows, and exactly zero on the unconditional ones."""
    reference = pooled_diffusers_controlnet()
    path = write_ldm(tmp_path, reference, "control_v11e_sd15_shuffle.safetensors")
    ours = controlnet_core.load_controlnet(path, overrides=SD1.overrides)
    assert ours.config.global_average_pooling is True and ours.cond_only
    assert "global average pooling" in ours.variant

    inputs = make_inputs("sd1", batch=4, seed=8)  # rows 0-1 cond, 2-3 uncond; two control frames
    image = inputs.hint[:2].permute(0, 2, 3, 1)
    stack = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=ours, image=image)])
    residuals = stack.residuals(inputs.x, inputs.timesteps, inputs.context, chunk_kinds=[0, 1])
    with torch.no_grad():
        down, mid = reference(inputs.x[:2], inputs.timesteps[:2], inputs.context[:2], inputs.hint[:2],
                              return_dict=False)
    assert all(r.shape[-2:] == (1, 1) for r in (*down, mid))  # diffusers pools to 1×1 and lets the UNet broadcast
    for index, (a, b) in enumerate(zip([*residuals.down, residuals.mid], [*down, mid])):
        assert_matches(a[:2], b.expand(-1, -1, *a.shape[-2:]), f"cond rows of residual {index}")
        assert torch.equal(a[2:], torch.zeros_like(a[2:])), f"uncond rows of residual {index}"


def test_pooling_forced_off_and_on(tmp_path):
    """The loader option wins over the file name, both ways."""
    from diffusers import ControlNetModel

    reference = pooled_diffusers_controlnet()
    shuffle = write_ldm(tmp_path, reference, "control_v11e_sd15_shuffle.safetensors")
    plain = controlnet_core.load_controlnet(shuffle, overrides=SD1.overrides, global_average_pooling=False)
    assert plain.config.global_average_pooling is False and not plain.cond_only
    # Unpooled, the same weights give diffusers' residuals without the pooling flag, on every row.
    unpooled = ControlNetModel(**SD1.diffusers_kwargs)
    unpooled.load_state_dict(reference.state_dict())
    inputs = make_inputs("sd1", batch=2, seed=9)
    stack = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=plain,
                                                                       image=inputs.hint.permute(0, 2, 3, 1))])
    with torch.no_grad():
        down, mid = unpooled.eval()(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
    assert_residuals_match(stack.residuals(inputs.x, inputs.timesteps, inputs.context), list(down), mid)

    renamed = write_ldm(tmp_path, reference, "style.safetensors")
    assert controlnet_core.load_controlnet(renamed, overrides=SD1.overrides).config.global_average_pooling is False
    forced = controlnet_core.load_control(renamed, global_average_pooling=True)
    assert forced.config.global_average_pooling is True and forced.cond_only


def test_a_diffusers_folder_pools_as_its_config_json_says(tmp_path):
    """diffusers' own save_pretrained writes the folder (config.json + diffusion_pytorch_model.safetensors);
    the file's name says nothing, its config's global_pool_conditions decides, in both directions."""
    from diffusers import ControlNetModel

    reference = pooled_diffusers_controlnet()
    reference.save_pretrained(tmp_path / "control_v11e_sd15_shuffle")
    path = tmp_path / "control_v11e_sd15_shuffle" / "diffusion_pytorch_model.safetensors"
    ours = controlnet_core.load_control(path)
    assert ours.config.global_average_pooling is True and ours.cond_only
    assert "by its config.json" in controlnet_core.identify(path).details["global average pooling"]
    inputs = make_inputs("sd1", batch=2, seed=9)
    stack = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=ours, image=inputs.hint.permute(0, 2, 3, 1))])
    residuals = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
    with torch.no_grad():
        down, mid = reference(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
    for index, (a, b) in enumerate(zip([*residuals.down, residuals.mid], [*down, mid])):
        assert_matches(a, b.expand(-1, -1, *a.shape[-2:]), f"residual {index}")

    plain = randomize_(ControlNetModel(**SD1.diffusers_kwargs), 22).eval()
    plain.save_pretrained(tmp_path / "some_controlnet")
    loaded = controlnet_core.load_control(tmp_path / "some_controlnet" / "diffusion_pytorch_model.safetensors")
    assert loaded.config.global_average_pooling is False and not loaded.cond_only


def test_a_config_json_is_read_only_beside_a_diffusers_file_and_a_broken_one_is_named(tmp_path):
    import json

    reference = pooled_diffusers_controlnet()
    # A flat models folder: a config.json of some other model beside an original-layout file is not its config.
    write_ldm(tmp_path, reference, "control_v11p_sd15_canny.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"global_pool_conditions": True}))
    flat = controlnet_core.load_control(tmp_path / "control_v11p_sd15_canny.safetensors")
    assert flat.config.global_average_pooling is False
    folder = tmp_path / "broken"
    reference.save_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json \(the config beside diffusion_pytorch_model.safetensors\): "
                                              r"expected readable JSON, found JSONDecodeError"):
        controlnet_core.load_control(folder / "diffusion_pytorch_model.safetensors")
    assert controlnet_core.identify(folder / "diffusion_pytorch_model.safetensors").details[
        "global average pooling"].startswith("unknown: ")  # identifying still works, and says why not
    (folder / "config.json").write_text(json.dumps({"global_pool_conditions": "yes"}))
    with pytest.raises(CheckpointError, match="global_pool_conditions expected true or false, found 'yes'"):
        controlnet_core.load_control(folder / "diffusion_pytorch_model.safetensors")
    # The loader's explicit choice still wins over the config.
    forced = controlnet_core.load_control(folder / "diffusion_pytorch_model.safetensors", global_average_pooling=False)
    assert forced.config.global_average_pooling is False


def test_pooled_control_keeps_strength_and_mask_per_pixel(tmp_path):
    """Strength scales the pooled value; a mask multiplies the broadcast value per pixel (the original has
    no masks: the pooled control then acts only where the mask is)."""
    reference = pooled_diffusers_controlnet()
    ours = controlnet_core.load_controlnet(write_ldm(tmp_path, reference, "x_shuffle.safetensors"),
                                           overrides=SD1.overrides)
    inputs = make_inputs("sd1", batch=2, seed=10)
    image = inputs.hint.permute(0, 2, 3, 1)
    mask = torch.zeros(1, *image.shape[1:3])
    mask[:, :, : image.shape[2] // 2] = 1.0  # left half
    full = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=ours, image=image)])
    masked = controlnet_core.ControlStack([controlnet_core.ControlEntry(model=ours, image=image, strength=0.5,
                                                                        mask=mask)])
    a = full.residuals(inputs.x, inputs.timesteps, inputs.context).down[0]
    b = masked.residuals(inputs.x, inputs.timesteps, inputs.context).down[0]
    half = a.shape[-1] // 2
    assert torch.equal(b[..., :half], a[..., :half] * 0.5)
    assert torch.equal(b[..., half:], torch.zeros_like(b[..., half:]))


def test_identify_tells_pooling_and_base_model_needs(tmp_path):
    reference = pooled_diffusers_controlnet()
    state = diffusers_to_ldm(diffusers_state_dict(reference))
    shuffle = controlnet_core.identify(save_state_dict(state, tmp_path / "control_v11e_sd15_shuffle.safetensors"))
    assert "global average pooling" in shuffle.details and not shuffle.needs_base_model
    diff = controlnet_core.identify(save_state_dict({**state, "difference": torch.zeros(1)},
                                                    tmp_path / "diff_control_sd15_depth_fp16.safetensors"))
    assert diff.needs_base_model and "global average pooling" not in diff.details


def test_pooling_and_base_model_are_refused_by_other_systems():
    from diffusers import T2IAdapter

    adapter = randomize_(T2IAdapter(in_channels=3, channels=[32, 64, 64], num_res_blocks=2), 2)
    state = diffusers_state_dict(adapter)
    with pytest.raises(CheckpointError, match="global average pooling applies to ControlNets only"):
        controlnet_core.load_control(state, global_average_pooling=True)
    with pytest.raises(CheckpointError, match="not built from the base model's weights"):
        controlnet_core.load_control(state, base_unet={"input_blocks.0.0.weight": torch.zeros(1)})


# ---- diff ControlNets ---------------------------------------------------------------------------------

def diff_file_state(controlnet, unet, dtype=torch.float16) -> tuple[dict, dict]:
    """(diff ControlNet state dict in the original layout with its `difference` key, the weights the
    loaded ControlNet must end up with in diffusers names). Encoder tensors are stored as
    (controlnet − unet) in `dtype`; the loader must add the base UNet's tensor in `dtype` (the host's rule)."""
    control = diffusers_state_dict(controlnet)
    base = diffusers_state_dict(unet)
    stored, expected = {}, {}
    for key, value in control.items():
        if key in base:  # conv_in, time_embedding, down_blocks, mid_block: the UNet's own names
            stored[key] = (value - base[key]).to(dtype)
            expected[key] = (stored[key] + base[key].to(dtype)).float()
        else:
            stored[key] = value.to(dtype)
            expected[key] = stored[key].float()
    return {**with_prefix(diffusers_to_ldm(stored), "control_model."), "difference": torch.tensor([])}, expected


def test_diff_controlnet_from_the_base_unet_matches_diffusers_bit_for_bit(tmp_path):
    from diffusers import ControlNetModel

    controlnet, unet = randomize_(ControlNetModel(**SD1.diffusers_kwargs), 31), make_diffusers_unet("sd1", 32)
    state, expected = diff_file_state(controlnet, unet)
    path = save_state_dict(state, tmp_path / "diff_control_sd15_depth_fp16.safetensors")
    reference = ControlNetModel(**SD1.diffusers_kwargs)
    reference.load_state_dict(expected)
    inputs = make_inputs("sd1", batch=2, seed=12)
    with torch.no_grad():
        down, mid = reference.eval()(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
    host_names = with_prefix(diffusers_unet_encoder_to_ldm(diffusers_state_dict(unet)), "diffusion_model.")
    for base in (diffusers_state_dict(unet), host_names):  # a diffusers UNet, and the host's MODEL state dict
        ours = controlnet_core.load_control(path, base_unet=base, dtype=torch.float32)
        with torch.no_grad():
            residuals = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
        assert_residuals_match(residuals, list(down), mid)


def test_diff_controlnet_without_or_with_a_wrong_base_is_refused(tmp_path):
    from diffusers import ControlNetModel

    controlnet, unet = randomize_(ControlNetModel(**SD1.diffusers_kwargs), 31), make_diffusers_unet("sd1", 32)
    state, _ = diff_file_state(controlnet, unet)
    with pytest.raises(controlnet_core.errors.BaseModelRequired, match="'diff' ControlNet"):
        controlnet_core.load_control(state)
    other = make_diffusers_unet("sd2", 33)  # same channels, another text width: attn2 shapes differ
    with pytest.raises(CheckpointError, match="base model is of another family"):
        controlnet_core.load_control(state, base_unet=diffusers_state_dict(other))


# ---- the LoadControlNet node --------------------------------------------------------------------------

class FakeModel:
    """A MODEL as the loader sees it: the host's ModelPatcher.model_state_dict(filter_prefix)."""

    def __init__(self, state_dict):
        self.state_dict, self.loaded = state_dict, 0

    def model_state_dict(self, filter_prefix=None):
        return {k: v for k, v in self.state_dict.items() if filter_prefix is None or k.startswith(filter_prefix)}


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "controlnet"
    folder.mkdir()
    return folder


@pytest.fixture
def nodes(monkeypatch, folder):
    return import_nodes(monkeypatch, folder)


def test_load_node_diff_controlnet_takes_the_base_from_its_model_input(nodes, folder, monkeypatch):
    import comfy.model_management  # the stub

    from diffusers import ControlNetModel

    controlnet, unet = randomize_(ControlNetModel(**SD1.diffusers_kwargs), 31), make_diffusers_unet("sd1", 32)
    state, expected = diff_file_state(controlnet, unet)
    save_state_dict(state, folder / "diff_control_sd15_depth_fp16.safetensors")
    with pytest.raises(nodes.InputError, match="Connect that model .* to this node's `model` input"):
        nodes.LoadControlNet().load("diff_control_sd15_depth_fp16.safetensors")

    host_unet = with_prefix(diffusers_unet_encoder_to_ldm(diffusers_state_dict(unet)), "diffusion_model.")
    model = FakeModel({**host_unet, "model_sampling.sigmas": torch.zeros(3)})
    loads = []
    monkeypatch.setattr(comfy.model_management, "load_models_gpu", lambda models, **kw: loads.append(models),
                        raising=False)
    loaded = nodes.LoadControlNet().load("diff_control_sd15_depth_fp16.safetensors", model=model)[0].source
    assert loads == [[model]]  # loaded first, so the LoRAs on it are in its weights (as the host does)
    ours = loaded.model
    reference = ControlNetModel(**SD1.diffusers_kwargs)
    reference.load_state_dict(expected)
    inputs = make_inputs("sd1", batch=2, seed=12)
    with torch.no_grad():
        down, mid = reference.eval()(inputs.x, inputs.timesteps, inputs.context, inputs.hint, return_dict=False)
        residuals = ours(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
    assert_residuals_match(residuals, list(down), mid)


def test_load_node_ignores_the_model_for_files_that_are_not_diff(nodes, folder, monkeypatch):
    import comfy.model_management

    save_state_dict(diffusers_to_ldm(diffusers_state_dict(pooled_diffusers_controlnet())), folder / "canny.safetensors")
    monkeypatch.setattr(comfy.model_management, "load_models_gpu", lambda models, **kw: pytest.fail("loaded"),
                        raising=False)
    loaded = nodes.LoadControlNet().load("canny.safetensors", model=FakeModel({}))[0].source
    assert loaded.model.config.global_average_pooling is False


def test_load_node_pooling_option(nodes, folder):
    state = diffusers_to_ldm(diffusers_state_dict(pooled_diffusers_controlnet()))
    save_state_dict(state, folder / "control_v11e_sd15_shuffle.safetensors")
    save_state_dict(state, folder / "other.safetensors")
    load = nodes.LoadControlNet().load
    pooling = {(name, option): load(name, global_average_pooling=option)[0].source.model.config.global_average_pooling
               for name in ("control_v11e_sd15_shuffle.safetensors", "other.safetensors")
               for option in ("auto", "on", "off")}
    assert pooling == {("control_v11e_sd15_shuffle.safetensors", "auto"): True,
                       ("control_v11e_sd15_shuffle.safetensors", "on"): True,
                       ("control_v11e_sd15_shuffle.safetensors", "off"): False,
                       ("other.safetensors", "auto"): False, ("other.safetensors", "on"): True,
                       ("other.safetensors", "off"): False}
    with pytest.raises(nodes.InputError, match="global_average_pooling: expected one of"):
        load("other.safetensors", global_average_pooling="yes")
