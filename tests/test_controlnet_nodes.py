"""Node layer without a host: nodes/*.py against tests/comfy_stub.py.

These tests check the node layer's contracts (what goes where in the host's control dict, which
hint the model receives, step-range boundaries, batching, modes, patches, hooks) with a probe
control whose outputs are known numbers, so every expected value is derived by hand here, never
computed with the pack's core. That the numbers match the host itself is checked in tests/host/.
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_stub import import_nodes
from tests.factories import ldm_state_dict, make_diffusers_controlnet, randomize_, tiny_config

# The host's unet_config of a small UNet: model_channels 32, levels (1, 2), one res block each. Its
# input blocks: 0 conv_in 32@1, 1 res 32@1, 2 downsample 32@2, 3 res 64@2; middle 64@2.
TINY_UNET_CONFIG = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "context_dim": 768,
                    "adm_in_channels": None}
BLOCKS = [(32, 1), (32, 1), (32, 2), (64, 2)]
MIDDLE = (64, 2)
LATENT = 4
SIGMAS = (14.6, 0.03)  # sigma at percent 0 and 1 of the fake schedule


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "controlnet"
    folder.mkdir()
    return folder


@pytest.fixture
def nodes(monkeypatch, folder):
    return import_nodes(monkeypatch, folder)


def core(name: str):
    """A module of the pack as the nodes imported it (the pack_under_test copy)."""
    return importlib.import_module(f"pack_under_test.controlnet_core.{name}")


def make_probe(targets=("skip", "middle"), soft_weights=None, patches=None, family="sd1"):
    """A control that records the hint it is given and adds known values: slot s adds (s + 1) at
    every element, times (frame index + 1) for the row's control frame."""
    protocol = core("protocol")

    class Probe(protocol.ControlModel):
        system = "Probe"

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.hints, self.soft_weights = [], soft_weights

        @property
        def family(self):
            return family

        @property
        def slots(self):
            return tuple(f"slot {i}" for i in range(len(self.targets())))

        def targets(self):
            out = []
            for kind in targets:
                if kind == "skip":
                    out += [protocol.Target.skip(i) for i in range(len(BLOCKS))]
                elif kind == "middle":
                    out.append(protocol.Target.middle())
                elif kind == "encoder":
                    out.append(protocol.Target.encoder(1))
                elif kind == "stream":
                    out.append(protocol.Target.stream(2))
                elif kind == "stream_middle":
                    out.append(protocol.Target.stream_middle())
            return out

        def hint_spec(self, h, w):
            return protocol.HintSpec(h * 8, w * 8, 3)

        def prepare(self, hint):
            self.hints.append(hint.clone())
            return torch.arange(hint.shape[0], dtype=torch.float32) + 1

        def additions(self, call, prepared, frames):
            per_row = prepared[frames].view(-1, 1, 1, 1)
            out = []
            for slot, target in enumerate(self.targets()):
                channels, down = MIDDLE if target.block is None else BLOCKS[target.block]
                value = per_row * (slot + 1) * torch.ones(len(frames), channels, LATENT // down, LATENT // down)
                if target.kind.startswith("stream"):
                    out.append(protocol.Addition(target, slot, lambda hidden, v=value: v.expand_as(hidden)))
                else:
                    out.append(protocol.Addition(target, slot, value))
            return out

        def unet_weight_patches(self):
            return dict(patches or {})

    return Probe()


def loaded(nodes, probe, name="probe.safetensors"):
    object_module = importlib.import_module("pack_under_test.nodes.control_object")
    probe.source = name  # as load_file names it
    return object_module.PackControl(source=object_module.wrap_model(probe, name, torch.device("cpu")))


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
    """A control some other pack put on the conditioning: returns fixed values and records calls."""

    def __init__(self, value: float, input_length: int = 0):
        self.value, self.calls, self.previous_controlnet, self.input_length = value, 0, None, input_length

    def get_control(self, x, t, cond, batched_number, transformer_options):
        self.calls += 1
        out = {"middle": [torch.full((x.shape[0], 64, 2, 2), self.value)],
               "output": [torch.full((x.shape[0], 32, 4, 4), self.value)] + [None] * 3}
        if self.input_length:
            out["input"] = [torch.full((x.shape[0], 32, 4, 4), self.value)] + [None] * (self.input_length - 1)
        return out

    def pre_run(self, model, fn):
        pass

    def cleanup(self):
        pass

    def get_models(self):
        return ["other-pack-model"]

    def inference_memory_requirements(self, dtype):
        return 123


def run_control(control, x, sigma, cond_or_uncond=(0, 1), transformer_options=None):
    control.pre_run(fake_base_model(), FakeModelSampling().percent_to_sigma)
    context = torch.randn(x.shape[0], 5, 768, generator=torch.Generator().manual_seed(3))
    t = torch.full((x.shape[0],), sigma)
    options = {"cond_or_uncond": list(cond_or_uncond), **(transformer_options or {})}
    return control.get_control(x, t, {"c_crossattn": context}, len(cond_or_uncond), options), options


def conditioning(previous=None):
    meta = {"pooled_output": None}
    if previous is not None:
        meta["control"] = previous
    return [[torch.zeros(1, 5, 768), meta]]


def first(tensor):
    return [float(row.flatten()[0]) for row in tensor]


def apply(nodes, control, image, strength=1.0, start=0.0, end=1.0, previous=None, **optional):
    positive, negative = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), control, image,
                                                       strength, start, end, **optional)
    return positive[0][1]["control"], positive, negative


# ---- where things go in the host's control dict --------------------------------------------------------

def test_skips_middle_and_encoder_additions_land_where_the_host_reads_them(nodes):
    probe = make_probe(("skip", "middle", "encoder"))
    control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3), strength=0.5)
    out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    # slot s adds (s + 1) · strength: skips are slots 0..3, middle 4, encoder (block 1) 5.
    assert [first(t) for t in out["output"]] == [[0.5, 0.5], [1.0, 1.0], [1.5, 1.5], [2.0, 2.0]]
    assert first(out["middle"][0]) == [2.5, 2.5]
    # The host pops "input" from the end after each input block: entry n-1-k is block k's.
    assert [None if t is None else first(t) for t in out["input"]] == [None, None, [3.0, 3.0], None]


def test_stream_additions_become_call_patches_without_touching_shared_lists(nodes):
    probe = make_probe(("stream", "stream_middle"))
    control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3))
    shared = [lambda h, opts: h]
    options = {"patches": {"input_block_patch_after_skip": shared}}
    out, options = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0, transformer_options=options)
    assert out is None or not any(out.values())
    assert len(shared) == 1  # the model's own list is not mutated
    after_skip = options["patches"]["input_block_patch_after_skip"]
    assert after_skip[0] is shared[0] and len(after_skip) == 2
    h = torch.zeros(2, 32, 2, 2)
    assert torch.equal(after_skip[1](h, {"block": ("input", 1)}), h)           # not its block
    assert first(after_skip[1](h, {"block": ("input", 2)})) == [1.0, 1.0]     # slot 0 adds 1
    patch, = options["patches"]["output_block_patch"]
    h, hsp = torch.zeros(2, 64, 2, 2), torch.zeros(2, 64, 2, 2)
    assert first(patch(h, hsp, {"block": ("output", 0)})[0]) == [2.0, 2.0]    # slot 1 adds 2
    assert torch.equal(patch(h, hsp, {"block": ("output", 1)})[0], h)


def test_unet_weight_patches_become_a_host_weight_hook(nodes):
    delta = torch.full((4, 4), 0.5)
    probe = make_probe(patches={"output_blocks.3.1.transformer_blocks.0.attn2.to_out.0.weight": ("diff", delta)})
    control, positive, negative = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3))
    assert control is negative[0][1]["control"]
    hook, = control.extra_hooks.hooks
    assert hook.need_weight_init is False
    assert hook.weights == {"diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_out.0.weight":
                            ("diff", (delta,))}
    assert apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3))[0].extra_hooks is None


def test_previous_controls_are_summed_lists_aligned_at_their_ends(nodes):
    """The UNet pops lists from the end, so a longer list (the host's SDXL adapter carries an unused
    leading slot) must meet ours at the end."""
    previous = RecordingControl(0.25, input_length=5)
    probe = make_probe(("skip", "middle", "encoder"))
    control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3), previous=previous)
    out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    assert previous.calls == 1
    assert first(out["output"][0]) == [1.25, 1.25] and first(out["middle"][0]) == [5.25, 5.25]
    assert len(out["input"]) == 5 and first(out["input"][0]) == [0.25, 0.25]  # theirs, untouched
    assert first(out["input"][3]) == [6.0, 6.0]  # ours: block 1 is the second from the end


# ---- which hint the model receives ---------------------------------------------------------------------

def nearest_exact_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The host's default, by hand: centre-crop to the target aspect, then nearest-exact
    (source index floor((i + 0.5) · in / out))."""
    h, w = image.shape[:2]
    if w / h > width / height:
        keep = round(h * width / height)
        image = image[:, (w - keep) // 2:(w - keep) // 2 + keep]
    elif w / h < width / height:
        keep = round(w * height / width)
        image = image[(h - keep) // 2:(h - keep) // 2 + keep]
    h, w = image.shape[:2]
    rows = np.minimum(np.floor((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(np.floor((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return image[rows][:, cols]


def test_hint_is_the_hosts_nearest_exact_centre_crop(nodes):
    image = torch.rand(1, 24, 30, 3, generator=torch.Generator().manual_seed(4))  # wider than square, smaller
    probe = make_probe()
    control, _, _ = apply(nodes, loaded(nodes, probe), image)
    run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    expected = nearest_exact_crop(image[0].numpy(), 32, 32)
    assert np.array_equal(probe.hints[0][0].movedim(0, -1).numpy(), expected)


def test_resize_mode_input_reaches_the_hint(nodes):
    image = torch.rand(1, 16, 32, 3, generator=torch.Generator().manual_seed(5))
    probe = make_probe()
    control, _, _ = apply(nodes, loaded(nodes, probe), image, resize_mode="just_resize")
    run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    rows = np.floor((np.arange(32) + 0.5) * 16 / 32).astype(int)  # stretch: every row twice, columns as they are
    assert np.array_equal(probe.hints[0][0].movedim(0, -1).numpy(), image[0].numpy()[rows])


# ---- step range, strength, batching, modes -------------------------------------------------------------

def test_step_range_boundaries_follow_the_hosts_sigma_test(nodes):
    """Host: off when sigma > sigma(start) or sigma < sigma(end); both ends included."""
    control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), start=0.25, end=0.5)
    sampling = FakeModelSampling()
    start, end = sampling.percent_to_sigma(0.25), sampling.percent_to_sigma(0.5)
    x = torch.zeros(2, 4, LATENT, LATENT)
    assert run_control(control, x, start)[0] is not None
    assert run_control(control, x, end)[0] is not None
    assert run_control(control, x, start + 1e-3)[0] is None
    assert run_control(control, x, end - 1e-3)[0] is None


def test_two_frames_for_one_latent_use_frame_0_for_cond_and_uncond(nodes):
    """The host's result for a 2-frame control image and one latent: frame 0 on both rows."""
    probe = make_probe(("middle",))
    for mode in ("balanced", "ControlNet is more important"):
        control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(2, 32, 32, 3), control_mode=mode)
        out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0, cond_or_uncond=(0, 1))
        assert first(out["middle"][0]) == ([1.0, 1.0] if mode == "balanced" else [1.0, 0.0])


def test_image_batch_that_does_not_pair_with_the_latents_fails_clearly(nodes):
    control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(3, 32, 32, 3))
    with pytest.raises(nodes.InputError, match="batch of 3 does not pair with the latent batch of 4"):
        run_control(control, torch.zeros(8, 4, LATENT, LATENT), 3.0)


def test_control_modes_scale_by_the_systems_soft_weights(nodes):
    probe = make_probe(("middle", "encoder"), soft_weights=(0.5, 0.25))
    for mode, expected in (("prompt is more important", ([0.5, 0.5], [0.5, 0.5])),
                           ("ControlNet is more important", ([0.0, 0.5], [0.0, 0.5]))):
        control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3), control_mode=mode)
        out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0, cond_or_uncond=(1, 0))
        assert (first(out["middle"][0]), first(out["input"][2])) == expected  # slot 1 adds 2 · 0.25


def test_mask_reaches_every_resolution(nodes):
    probe = make_probe(("skip", "middle"))
    mask = torch.zeros(1, 32, 32)
    mask[..., :16] = 1.0  # the left half
    control, _, _ = apply(nodes, loaded(nodes, probe), torch.rand(1, 32, 32, 3), mask=mask)
    out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    for tensor in out["output"] + out["middle"]:
        half = tensor.shape[-1] // 2
        assert tensor[..., :half].min() > 0 and tensor[..., half:].abs().max() == 0


# ---- nodes and loading ----------------------------------------------------------------------------------

def write_controlnet(folder, name, seed):
    save_file({k: v.contiguous() for k, v in ldm_state_dict(make_diffusers_controlnet("sd1", seed)).items()},
              str(folder / name))


def test_load_controlnet_loads_every_system_it_runs(nodes, folder):
    from diffusers import T2IAdapter

    from tests.test_controlnext import ReferenceModuleA, reference_state

    write_controlnet(folder, "cn.safetensors", 1)
    adapter = randomize_(T2IAdapter(in_channels=3, channels=[32, 64, 64], num_res_blocks=2), 2)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(folder / "t2i.safetensors"))
    save_file(reference_state(ReferenceModuleA(), 3), str(folder / "controlnext.safetensors"))
    systems = {name: nodes.LoadControlNet().load(name)[0].source.system
               for name in ("cn.safetensors", "t2i.safetensors", "controlnext.safetensors")}
    assert systems == {"cn.safetensors": "ControlNet", "t2i.safetensors": "T2I-Adapter",
                       "controlnext.safetensors": "ControlNeXt"}
    with pytest.raises(Exception, match="takes no companion weight file"):
        nodes.LoadControlNet().load("cn.safetensors", unet_weights="t2i.safetensors")


def test_files_the_pack_does_not_run_name_what_to_use(nodes, folder):
    save_file({"style_embedding": torch.zeros(1, 8, 1024), "proj": torch.zeros(1024, 768)},
              str(folder / "t2iadapter_style_sd14v1.safetensors"))
    with pytest.raises(Exception, match="T2I-Adapter \\(style\\), which this pack does not run: .*'Load Style Model'"):
        nodes.LoadControlNet().load("t2iadapter_style_sd14v1.safetensors")


def test_names_resolve_only_inside_the_controlnet_folder(nodes, folder):
    write_controlnet(folder, "pose.safetensors", 1)
    assert nodes.resolve_controlnet_path("pose.safetensors") == str(folder / "pose.safetensors")
    with pytest.raises(nodes.InputError, match="outside ComfyUI's controlnet folder"):
        nodes.resolve_controlnet_path("../pose.safetensors")
    with pytest.raises(nodes.InputError, match="outside"):
        nodes.resolve_controlnet_path("/etc/passwd")
    with pytest.raises(FileNotFoundError, match="'missing.safetensors' was not found"):
        nodes.resolve_controlnet_path("missing.safetensors")


def test_loading_the_same_file_twice_reuses_the_weights(nodes, folder):
    write_controlnet(folder, "pose.safetensors", 1)
    first_load, = nodes.LoadControlNet().load("pose.safetensors")
    second_load, = nodes.LoadControlNet().load("pose.safetensors")
    assert first_load.source is second_load.source


def test_apply_shares_one_object_and_keeps_previous_control(nodes):
    previous = RecordingControl(0.25)
    control, positive, negative = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), 1.0, 0.5, 1.0,
                                        previous=previous)
    assert control is negative[0][1]["control"] and control.previous_controlnet is previous
    assert positive[0][1]["control_apply_to_uncond"] is False
    early, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), FakeModelSampling().percent_to_sigma(0.5) + 0.1)
    assert first(early["middle"][0]) == [0.25, 0.25]  # ours is off: only the previous control


def stack_inputs(**slots):
    common = {f"{k}_{i}": v for i in (1, 2, 3) for k, v in
              (("enabled", True), ("strength", 1.0), ("start_percent", 0.0), ("end_percent", 1.0),
               ("control_mode", "balanced"))}
    return {**common, **slots}


def test_multicontrolstack_entries_switch_and_chain(nodes):
    pose, depth = loaded(nodes, make_probe(), "pose"), loaded(nodes, make_probe(), "depth")
    image = torch.rand(1, 32, 32, 3)
    node = nodes.MultiControlStack()
    _, _, stack = node.apply(**stack_inputs(enabled_2=False, control_net_1=pose, image_1=image, control_net_2=depth,
                                            image_2=image))
    assert [unit.net for unit in stack] == [pose.source]  # entry 2 is off, entry 3 is empty
    positive, negative, chained = node.apply(conditioning(), conditioning(), stack,
                                             **stack_inputs(control_net_1=depth, image_1=image))
    assert [unit.net for unit in chained] == [pose.source, depth.source]
    control = positive[0][1]["control"]
    assert control is negative[0][1]["control"] and len(control.units) == 2
    with pytest.raises(nodes.InputError, match="entry 2: image_2 is not connected"):
        node.apply(**stack_inputs(control_net_2=pose))


def test_a_stack_fed_back_with_its_own_conditioning_is_refused(nodes):
    """Bug: a second stack node given both the first node's positive/negative and its stack output
    applied the first node's entries twice (pose at double strength)."""
    pose, depth = loaded(nodes, make_probe(), "pose"), loaded(nodes, make_probe(), "depth")
    image = torch.rand(1, 32, 32, 3)
    node = nodes.MultiControlStack()
    positive, negative, stack = node.apply(conditioning(), conditioning(), None,
                                           **stack_inputs(control_net_1=pose, image_1=image))
    with pytest.raises(nodes.InputError, match="would be applied twice"):
        node.apply(positive, negative, stack, **stack_inputs(control_net_1=depth, image_1=image))
    # Either connection alone is fine, and the same control file twice is two entries, not a repeat.
    good, _, _ = node.apply(positive, negative, None, **stack_inputs(control_net_1=pose, image_1=image))
    assert len(good[0][1]["control"].units) == 2


def test_stack_equals_two_chained_apply_nodes(nodes):
    pose, depth = loaded(nodes, make_probe(), "pose"), loaded(nodes, make_probe(), "depth")
    p1, n1 = nodes.ApplyControlNet().apply(conditioning(), conditioning(), pose, torch.rand(1, 32, 32, 3), 0.9, 0.0, 1.0)
    p2, _ = nodes.ApplyControlNet().apply(p1, n1, depth, torch.rand(1, 48, 32, 3), 0.7, 0.0, 1.0)
    stacked, _, _ = nodes.MultiControlStack().apply(conditioning(), conditioning(), None, **stack_inputs(
        strength_1=0.9, control_net_1=pose, image_1=torch.rand(1, 32, 32, 3), strength_2=0.7, control_net_2=depth,
        image_2=torch.rand(1, 48, 32, 3)))
    x = torch.zeros(2, 4, LATENT, LATENT)
    chained, _ = run_control(p2[0][1]["control"], x, 4.0)
    stack, _ = run_control(stacked[0][1]["control"], x, 4.0)
    assert first(chained["middle"][0]) == first(stack["middle"][0]) == pytest.approx([5 * (0.9 + 0.7)] * 2)


def test_host_apply_node_path_equals_ours(nodes):
    """The host's Apply ControlNet does control_net.copy().set_cond_hint(hint BCHW, strength, range)."""
    source = loaded(nodes, make_probe())
    image = torch.rand(1, 32, 40, 3)
    host_style = source.copy().set_cond_hint(image.movedim(-1, 1), 0.6, (0.0, 1.0))
    ours, _, _ = apply(nodes, source, image, 0.6)
    a, _ = run_control(host_style, torch.zeros(2, 4, LATENT, LATENT), 2.0)
    b, _ = run_control(ours, torch.zeros(2, 4, LATENT, LATENT), 2.0)
    assert [first(t) for t in a["output"] + a["middle"]] == [first(t) for t in b["output"] + b["middle"]]


def test_control_that_does_not_fit_the_unet_names_both_before_sampling(nodes):
    control, _, _ = apply(nodes, loaded(nodes, make_probe(family="sdxl"), "xl.safetensors"), torch.rand(1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"Probe 'xl.safetensors' is for SDXL but the base model SD15 is SD1.x"):
        control.pre_run(fake_base_model(), FakeModelSampling().percent_to_sigma)


def test_cleanup_drops_cached_state_and_chains(nodes):
    previous = RecordingControl(1.0)
    cleaned = []
    previous.cleanup = lambda: cleaned.append(True)
    control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3), previous=previous)
    run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    control.cleanup()
    assert cleaned == [True] and control._stack is None
    assert control.inference_memory_requirements(torch.float32) == 123


def test_works_under_inference_mode_like_the_host(nodes):
    """The host runs nodes and the sampler under torch.inference_mode(): images, masks and weights
    made there are inference tensors, which lack the version counter a cache key might read."""
    with torch.inference_mode():
        control, _, _ = apply(nodes, loaded(nodes, make_probe()), torch.rand(1, 32, 32, 3),
                              mask=torch.ones(1, 32, 32))
        out, _ = run_control(control, torch.zeros(2, 4, LATENT, LATENT), 3.0)
    assert first(out["middle"][0]) == [5.0, 5.0]


def test_control_the_core_cannot_run_stays_on_the_host_path(nodes):
    """E.g. a Control-LoRA from the host's loader: chained like the host's apply node; no mask or mode."""
    import comfy.controlnet  # the stub, installed by the nodes fixture

    class ControlLora(comfy.controlnet.ControlBase):
        def copy(self):
            copied = ControlLora()
            self.copy_to(copied)
            return copied

    lora, image = ControlLora(), torch.rand(1, 32, 32, 3)
    previous = RecordingControl(0.1)
    positive, negative = nodes.ApplyControlNet().apply(conditioning(previous), conditioning(previous), lora, image,
                                                       0.7, 0.2, 0.9)
    control = positive[0][1]["control"]
    assert type(control) is ControlLora and control is negative[0][1]["control"]
    assert control.previous_controlnet is previous and control.strength == 0.7
    assert control.timestep_percent_range == (0.2, 0.9)
    assert torch.equal(control.cond_hint_original, image.movedim(-1, 1))
    with pytest.raises(nodes.InputError, match="no mask, control mode or resize mode"):
        nodes.ApplyControlNet().apply(conditioning(), conditioning(), lora, image, 1.0, 0.0, 1.0,
                                      mask=torch.ones(32, 32))


def test_host_set_union_type_picks_each_entrys_type_on_our_loaders_union(nodes, folder):
    """The host's SetUnionControlNetType does control_net.copy() then extra_args["control_type"] =
    [id] ([] for auto): each entry gets a typed view of the one loaded network."""
    from tests.test_union import make_diffusers_union, state_dict_of

    save_file(state_dict_of(make_diffusers_union(8)), str(folder / "union.safetensors"))
    source, = nodes.LoadControlNet().load("union.safetensors")

    def typed(type_ids):
        control = source.copy()
        control.extra_args = {"control_type": type_ids}
        return control

    stacked, _, _ = nodes.MultiControlStack().apply(conditioning(), conditioning(), None, **stack_inputs(
        control_net_1=typed([0]), image_1=torch.rand(1, 32, 32, 3), control_net_2=typed([1]),
        image_2=torch.rand(1, 32, 32, 3), control_net_3=typed([]), image_3=torch.rand(1, 32, 32, 3), enabled_3=True))
    nets = [unit.net for unit in stacked[0][1]["control"].units]
    assert [net.model.control_type for net in nets] == [0, 1, None]
    assert nets[0].model.network is nets[1].model.network is source.source.model.network
    assert nets[0].patcher is nets[1].patcher is source.source.patcher  # one model for the memory manager
    assert "openpose" in nets[0].name and "depth" in nets[1].name
    with pytest.raises(Exception, match="one control type per entry"):
        nodes.ApplyControlNet().apply(conditioning(), conditioning(), typed([0, 1]), torch.rand(1, 32, 32, 3), 1.0,
                                      0.0, 1.0)
