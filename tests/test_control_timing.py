"""Per-block weights, timestep keyframes and strength curves, context windows and sparse controls, in
the core (no host). Expected values are derived by hand from the documented rules (weights.py,
keyframes.py, context.py, README), or from diffusers' own expression (guess mode).

The stack arithmetic uses the probe system of test_stack_protocol: each addition's value is
(frame index + 1) · 10^slot, so scale, frame and slot can be read off the result.
"""
from __future__ import annotations

import math

import pytest
import torch

from controlnet_core import ControlEntry, ControlStack, InputError
from controlnet_core.context import FrameWindow, parse_frame_indices, window_from_options
from controlnet_core.controlnet import ControlNetConfig, ControlNetModel
from controlnet_core.controlnext.config import MODULE_A_CONFIG
from controlnet_core.controlnext.model import ControlNeXtModel
from controlnet_core.keyframes import Keyframe, KeyframeGroup, parse_curve_points, strength_curve
from controlnet_core.modes import MODE_CONTROLNET
from controlnet_core.protocol import Target
from controlnet_core.t2i_adapter.config import T2IAdapterConfig
from controlnet_core.t2i_adapter.formats import XL_DOWNSAMPLE
from controlnet_core.t2i_adapter.model import T2IAdapterModel
from controlnet_core.weights import ControlWeights, parse_weight_values
from tests.test_stack_protocol import LATENT, Probe, frames_image, row_values

# ---- models on the meta device: slots and places only, no weights --------------------------------


@pytest.fixture(scope="module")
def sd15_controlnet():
    return ControlNetModel(ControlNetConfig(), device="meta")


@pytest.fixture(scope="module")
def sdxl_controlnet():
    return ControlNetModel(ControlNetConfig(family="sdxl", channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2),
                                            transformer_depth=(0, 0, 2, 2, 10, 10), context_dim=2048, num_heads=None,
                                            num_head_channels=64, adm_in_channels=2816), device="meta")


@pytest.fixture(scope="module")
def sd15_adapter():
    return T2IAdapterModel(T2IAdapterConfig("full", 3, 8, (320, 640, 1280, 1280), (False, True, True, True), 2),
                           device="meta")


@pytest.fixture(scope="module")
def sdxl_adapter():
    return T2IAdapterModel(T2IAdapterConfig("full", 3, 16, (320, 640, 1280, 1280), XL_DOWNSAMPLE, 2), device="meta")


# ---- weights presets -------------------------------------------------------------------------------

def test_a1111_soft_weights_are_the_control_modes_values(sd15_controlnet, sdxl_controlnet, sd15_adapter):
    a1111 = [0.825 ** (12 - i) for i in range(13)]  # A1111's list, middle last
    assert ControlWeights("A1111 soft weights").resolve(sd15_controlnet).slots == pytest.approx(a1111, rel=1e-15)
    assert ControlWeights("A1111 soft weights").resolve(sdxl_controlnet).slots == pytest.approx(a1111[:10], rel=1e-15)
    assert ControlWeights("A1111 soft weights").resolve(sd15_adapter).slots == (0.25, 0.62, 0.825, 1.0)


def test_guess_mode_is_diffusers_logspace_on_the_cond_rows_only(sd15_controlnet, sdxl_controlnet):
    for model, count in ((sd15_controlnet, 13), (sdxl_controlnet, 10)):
        resolved = ControlWeights("diffusers guess mode").resolve(model)
        diffusers = torch.logspace(-1, 0, count).tolist()  # diffusers' pipeline, float32
        assert resolved.slots == pytest.approx(diffusers, rel=1e-6)  # float32 logspace vs float64
        assert resolved.slots[0] == pytest.approx(0.1) and resolved.slots[-1] == 1.0
        assert resolved.uncond_multiplier == 0.0


def test_only_middle_and_only_deep_skips_pick_the_documented_slots(sd15_controlnet, sdxl_controlnet, sd15_adapter,
                                                                   sdxl_adapter):
    assert ControlWeights("only the middle").resolve(sd15_controlnet).slots == (0.0,) * 12 + (1.0,)
    assert ControlWeights("only the deep skips").resolve(sd15_controlnet).slots == (0.0,) * 9 + (1.0,) * 3 + (0.0,)
    assert ControlWeights("only the deep skips").resolve(sdxl_controlnet).slots == (0.0,) * 6 + (1.0,) * 3 + (0.0,)
    # SD1.x adapter: features after blocks 2, 5, 8, 11; the deepest (1/8) is block 11.
    assert ControlWeights("only the deep skips").resolve(sd15_adapter).slots == (0.0, 0.0, 0.0, 1.0)
    # SDXL adapter: blocks 3, 5, 8 and the middle block; the deepest skip level (1/4) is block 8.
    assert ControlWeights("only the deep skips").resolve(sdxl_adapter).slots == (0.0, 0.0, 1.0, 0.0)
    assert ControlWeights("only the middle").resolve(sdxl_adapter).slots == (0.0, 0.0, 0.0, 1.0)


def test_multiplier_and_custom_values(sd15_adapter):
    resolved = ControlWeights("uniform", multiplier=0.5, uncond_multiplier=0.25).resolve(sd15_adapter)
    assert resolved.slots == (0.5,) * 4 and resolved.uncond_multiplier == 0.25
    custom = ControlWeights("custom", multiplier=2.0, values=parse_weight_values("0.1, 0.2 0.3,0.4"))
    assert custom.resolve(sd15_adapter).slots == (0.2, 0.4, 0.6, 0.8)


@pytest.mark.parametrize("weights, model_name, needle", [
    (ControlWeights("only the middle"), "sd15_adapter", "has no|adds nothing at the middle"),
    (ControlWeights("diffusers guess mode"), "sd15_adapter", "guess mode"),
    (ControlWeights("custom", values=(1.0,) * 13), "sd15_adapter", "4 slots"),
    (ControlWeights("A1111 soft weights"), "controlnext", "soft weights"),
    (ControlWeights("only the deep skips"), "controlnext", "skips"),
])
def test_weights_that_do_not_fit_name_both(request, weights, model_name, needle):
    model = ControlNeXtModel(MODULE_A_CONFIG, device="meta") if model_name == "controlnext" else \
        request.getfixturevalue(model_name)
    with pytest.raises(InputError) as error:
        weights.resolve(model)
    message = str(error.value)
    assert weights.preset in message or "custom weights" in message
    assert model.system in message and any(part in message for part in needle.split("|")), message


def test_bad_weights_input_is_refused():
    with pytest.raises(InputError, match="preset"):
        ControlWeights("soft")
    with pytest.raises(InputError, match="multiplier"):
        ControlWeights(multiplier=float("nan"))
    with pytest.raises(InputError, match="numbers"):
        parse_weight_values("0.1, high")


# ---- weights in the stack ----------------------------------------------------------------------------

class PlacedProbe(Probe):
    """The probe with real places: slot_targets reports its targets."""

    def slot_targets(self, layout=None):
        return tuple(self.targets)


def run(entries, batch=2, chunk_kinds=(0, 1), **options):
    x = torch.zeros(batch, 4, LATENT, LATENT)
    return ControlStack(entries).contributions(x, torch.full((batch,), 500.0), torch.zeros(batch, 3, 8),
                                               chunk_kinds=list(chunk_kinds), **options)


def test_weights_object_scales_slots_and_uncond_rows_in_the_stack():
    probe = PlacedProbe([Target.skip(0), Target.middle()])
    weights = ControlWeights("only the middle", multiplier=0.5, uncond_multiplier=0.25)
    result = run([ControlEntry(probe, frames_image(1), strength=2.0, weights=weights)])
    assert row_values(result.skips[0]) == [0.0, 0.0]  # weight 0 on the skip
    assert row_values(result.middle) == [10 * 2.0 * 0.5, 10 * 2.0 * 0.5 * 0.25]  # 10^1 · strength · w · uncond


def test_guess_mode_weights_skip_the_uncond_rows_even_in_balanced_mode():
    probe = PlacedProbe([Target.skip(0), Target.middle()])
    result = run([ControlEntry(probe, frames_image(1), weights=ControlWeights("diffusers guess mode"))])
    assert row_values(result.skips[0]) == pytest.approx([0.1, 0.0]) and row_values(result.middle) == [10.0, 0.0]


# ---- keyframes and curves -----------------------------------------------------------------------------

def test_hold_keyframes_step_and_inherit_masks_and_weights():
    mask = torch.ones(8, 8)
    group = KeyframeGroup([Keyframe(0.2, 0.5, weights=[1.0, 0.5]), Keyframe(0.5, 0.25, mask=mask), Keyframe(0.8, 0.0)])
    resolved = group.resolve(PlacedProbe([Target.skip(0), Target.middle()]))
    assert resolved.state(0.1).strength == 1.0 and resolved.state(0.1).weights is None  # before the first
    assert resolved.state(0.2).strength == 0.5 and resolved.state(0.49).weights == (1.0, 0.5)
    late = resolved.state(0.6)
    assert late.strength == 0.25 and late.weights == (1.0, 0.5) and late.mask.shape == (1, 1, 8, 8)  # inherited
    assert resolved.state(0.9).strength == 0.0 and resolved.state(0.9).mask is not None


@pytest.mark.parametrize("shape, at_quarter", [("linear", 0.75), ("ease", (1 + math.cos(math.pi / 4)) / 2),
                                               ("constant", 1.0)])
def test_curve_fades_out_over_the_last_40_percent(shape, at_quarter):
    curve = strength_curve(parse_curve_points("0.6:1.0, 1.0:0.0"), shape).resolve(PlacedProbe([Target.skip(0)]))
    assert curve.state(0.3).strength == 1.0 and curve.state(0.6).strength == 1.0
    # a quarter of the way through the segment: linear 1 − 0.25; ease 1 − (1 − cos(π/4))/2; constant holds
    assert curve.state(0.7).strength == pytest.approx(at_quarter, abs=1e-12)
    assert curve.state(1.0).strength == 0.0


def test_weights_interpolate_with_the_strength():
    group = KeyframeGroup([Keyframe(0.0, 1.0, weights=[1.0, 0.0], interpolation="linear"),
                           Keyframe(0.5, 0.0, weights=[0.0, 1.0])])
    state = group.resolve(PlacedProbe([Target.skip(0), Target.middle()])).state(0.25)
    assert state.strength == 0.5 and state.weights == (0.5, 0.5)


def test_keyframes_chain_like_conditioning_and_replace_at_the_same_start():
    base = KeyframeGroup().add(Keyframe(0.0, 1.0))
    branch_a, branch_b = base.add(Keyframe(0.5, 0.2)), base.add(Keyframe(0.5, 0.7), Keyframe(0.0, 0.9))
    assert len(base) == 1 and branch_a.starts == (0.0, 0.5)
    assert [k.strength for k in branch_b] == [0.9, 0.7]


def test_keyframe_weights_that_do_not_fit_name_the_keyframe_and_the_control(sd15_adapter):
    with pytest.raises(InputError, match=r"keyframe at 0\.5: .*only the middle.*T2I-Adapter"):
        KeyframeGroup([Keyframe(0.5, weights=ControlWeights("only the middle"))]).resolve(sd15_adapter)
    with pytest.raises(InputError, match="interpolation"):
        Keyframe(0.1, interpolation="cubic")
    with pytest.raises(InputError, match="percent:strength"):
        parse_curve_points("0.5=1")


def test_combining_rule_entry_and_keyframe_multiply_inside_the_entry_range():
    """README rule: the range gates; strength, weights and masks multiply (values chosen exact in binary)."""
    probe = PlacedProbe([Target.skip(0), Target.middle()])
    left_half = torch.zeros(32, 32)
    left_half[:, :16] = 1.0
    keyframes = KeyframeGroup([Keyframe(0.5, 0.5, weights=[0.5, 0.25], mask=left_half)])
    entry = ControlEntry(probe, frames_image(1), strength=0.75, start=0.1, end=0.9, weights=[0.5, 1.0],
                         keyframes=keyframes, mask=torch.full((32, 32), 0.5))
    assert run([entry], percent=0.05) is None  # outside the entry's range: off, whatever the keyframes say
    before = run([entry], percent=0.3)
    assert row_values(before.skips[0]) == [0.75 * 0.5 * 0.5] * 2  # strength · weight · entry mask
    after = run([entry], percent=0.6)
    skip = after.skips[0]
    assert skip[0, 0, 0, 0].item() == 0.75 * 0.5 * 0.5 * 0.5 * 0.5  # · keyframe strength · keyframe weight
    assert skip[0, 0, 0, -1].item() == 0.0  # keyframe mask: left half only
    assert after.middle[0, 0, 0, 0].item() == 10 * 0.75 * 1.0 * 0.5 * 0.5 * 0.25


def test_keyframe_changes_keep_the_per_image_cache():
    probe = PlacedProbe([Target.skip(0)])
    entry = ControlEntry(probe, frames_image(2), keyframes=strength_curve([(0.0, 1.0), (1.0, 0.1)], "linear"))
    stack = ControlStack([entry])
    x = torch.zeros(4, 4, LATENT, LATENT)
    values = []
    for percent in (0.0, 0.25, 0.5, 0.75):
        out = stack.contributions(x, torch.full((4,), 500.0), torch.zeros(4, 3, 8), percent=percent,
                                  chunk_kinds=[0, 1])
        values.append(out.skips[0][0, 0, 0, 0].item())
    assert probe.prepared_calls == 1
    assert values == pytest.approx([1.0, 0.775, 0.55, 0.325])


def test_a_faded_out_entry_is_not_computed():
    probe = PlacedProbe([Target.skip(0)])
    entry = ControlEntry(probe, frames_image(1), keyframes=KeyframeGroup([Keyframe(0.5, 0.0)]))
    assert run([entry], percent=0.7) is None and probe.prepared_calls == 0


# ---- context windows and sparse controls -------------------------------------------------------------

def test_each_window_row_uses_its_own_latents_control_frame():
    """16 frames, windows of 8 (overlapping, as the host's uniform schedule makes them): row j of each
    chunk is frame window[j] (value frame + 1), for cond and uncond alike."""
    probe = PlacedProbe([Target.skip(0)])
    entry = ControlEntry(probe, frames_image(16))
    for window in ((0, 1, 2, 3, 4, 5, 6, 7), (4, 5, 6, 7, 8, 9, 10, 11), (8, 9, 10, 11, 12, 13, 14, 15),
                   (14, 15, 0, 1, 2, 3, 4, 5)):
        result = run([entry], batch=16, window=FrameWindow(window, 16))
        assert row_values(result.skips[0]) == [float(f + 1) for f in window] * 2


def test_windows_pair_masks_and_repeating_images_over_the_full_video():
    probe = PlacedProbe([Target.skip(0)])
    mask = torch.zeros(16, 32, 32)
    mask[1::2] = 1.0  # odd frames only
    entry = ControlEntry(probe, frames_image(2), mask=mask)  # 2 images repeat over 16 frames: 0, 1, 0, 1…
    result = run([entry], batch=8, chunk_kinds=[0], window=FrameWindow((5, 6, 7, 8, 9, 10, 11, 12), 16))
    assert row_values(result.skips[0]) == [2.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0]


def test_window_from_the_hosts_options_and_animatediff_params():
    class HostWindow:  # the attributes of comfy.context_windows.IndexListContextWindow
        index_list, dim, total_frames = [8, 9, 10], 0, 16

    assert window_from_options({"context_window": HostWindow()}) == FrameWindow((8, 9, 10), 16)
    assert window_from_options({"ad_params": {"sub_idxs": [2, 3], "full_length": 12}}) == FrameWindow((2, 3), 12)
    assert window_from_options({}) is None


def test_sparse_frames_leave_the_others_exactly_uncontrolled():
    probe = PlacedProbe([Target.skip(0)])
    entry = ControlEntry(probe, frames_image(2), frame_indices=parse_frame_indices("1, 3"))
    result = run([entry], batch=8, chunk_kinds=[0, 1])  # 4 frames, cond + uncond
    assert row_values(result.skips[0]) == [0.0, 1.0, 0.0, 2.0] * 2
    zeros = result.skips[0][[0, 2, 4, 6]]
    assert torch.equal(zeros, torch.zeros_like(zeros)) and not zeros.signbit().any()
    windowed = run([entry], batch=4, window=FrameWindow((2, 3), 4))
    assert row_values(windowed.skips[0]) == [0.0, 2.0] * 2
    assert run([entry], batch=4, window=FrameWindow((0, 2), 4)) is None  # no controlled frame in this window


def test_sparse_frame_indices_are_checked():
    probe = PlacedProbe([Target.skip(0)])
    with pytest.raises(InputError, match="2 latent frames but the control image has 3"):
        ControlEntry(probe, frames_image(3), frame_indices=[0, 4])
    with pytest.raises(InputError, match="distinct"):
        ControlEntry(probe, frames_image(2), frame_indices=[4, 4])
    assert parse_frame_indices("0, 4-6") == (0, 4, 5, 6) and parse_frame_indices(" ") is None
    with pytest.raises(InputError, match="frame numbers"):
        parse_frame_indices("a-b")


def test_control_modes_still_apply_under_windows_and_keyframes():
    probe = PlacedProbe([Target.skip(0)], soft_weights=(1.0,))
    entry = ControlEntry(probe, frames_image(4), mode=MODE_CONTROLNET, keyframes=KeyframeGroup([Keyframe(0.0, 0.5)]))
    result = run([entry], batch=4, percent=0.5, window=FrameWindow((2, 3), 4))
    assert row_values(result.skips[0]) == [1.5, 2.0, 0.0, 0.0]


# ---- every system follows the window (real tiny models) -------------------------------------------------

def tiny_adapter():
    from controlnet_core import load_t2i_adapter
    from tests.test_t2i_adapter import diffusers_adapter

    return load_t2i_adapter({k: v.clone() for k, v in diffusers_adapter("full").state_dict().items()})


def tiny_controlnext():
    from controlnet_core.controlnext.config import SD15
    from tests.factories import randomize_

    config = type(MODULE_A_CONFIG)(**{**MODULE_A_CONFIG.__dict__, "final_out_channels": 32, "variant": SD15})
    return randomize_(ControlNeXtModel(config), seed=4).eval()


def evaluated(contribution, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor a contribution holds, stream functions evaluated on `hidden`, in a fixed order."""
    tensors = [contribution.skips[k] for k in sorted(contribution.skips)]
    tensors += [contribution.encoder[k] for k in sorted(contribution.encoder)]
    tensors += [] if contribution.middle is None else [contribution.middle]
    for point in sorted(contribution.stream, key=str):
        tensors.append(contribution.stream_addition(point, hidden))
    return tensors


@pytest.mark.parametrize("make_model", [tiny_adapter, tiny_controlnext], ids=["T2I-Adapter", "ControlNeXt"])
def test_every_system_gives_each_window_row_its_own_frames_control(make_model):
    """8 distinct control frames, the window (4, 5, 6, 7): row r of the windowed call equals a call
    with only frame 4 + r and only latent row r. (Batch 4 against batch 1 convolutions may differ in
    the last bits, hence the tolerance; the position-paired frames 0–3 differ by far more.)"""
    from tests.test_t2i_adapter import layout_of

    model, layout = make_model(), layout_of("sd1")
    generator = torch.Generator().manual_seed(7)
    frames = torch.rand(8, 64, 64, 3, generator=generator)
    x, context = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 5, 768, generator=generator)
    hidden = torch.randn(4, 32, 4, 4, generator=generator)
    timesteps = torch.full((4,), 400.0)
    window = FrameWindow((4, 5, 6, 7), 8)
    batched = evaluated(ControlStack([ControlEntry(model, frames)]).contributions(
        x, timesteps, context, layout=layout, window=window), hidden)
    assert batched
    for row, frame in enumerate(window.indices):
        for image, should_match in ((frames[frame:frame + 1], True), (frames[row:row + 1], False)):
            alone = evaluated(ControlStack([ControlEntry(model, image)]).contributions(
                x[row:row + 1], timesteps[:1], context[row:row + 1], layout=layout), hidden[row:row + 1])
            worst = max(((a[row] - b[0]).abs().max() / b.abs().max()).item() for a, b in zip(batched, alone))
            assert (worst <= 1e-5) == should_match, (row, frame, should_match, worst)
