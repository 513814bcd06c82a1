"""Work avoidance (controlnet_core/fast.py): the exact part is checked bit for bit against independent
references, the inexact part (residual reuse) for when it recomputes and what it hands back.

Exact: rows with identical inputs are computed once (diffusers' ControlNetModel on the full batch,
and the released ControlNeXt injection rebuilt in tests/test_controlnext.py, are the oracles);
entries that add nothing are never computed.
Not exact: residual reuse every k steps or adaptively; at a reuse step the additions are those of
the last computed step (diffusers at that step's inputs), at a compute step those of the new inputs.
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core import ControlEntry, ControlStack, InputError, load_controlnet
from controlnet_core.fast import SPEED_MODES, ReusePolicy, speed_mode, unique_rows
from controlnet_core.protocol import UNetCall
from tests.factories import ldm_state_dict, make_diffusers_controlnet, make_inputs


@pytest.fixture(scope="module")
def nets():
    reference = make_diffusers_controlnet("sd1", seed=5)
    return reference, load_controlnet(ldm_state_dict(reference), overrides={"num_heads": 8})


class RowCounter:
    """Records the batch of every forward of `model` (results unchanged)."""

    def __init__(self, model, monkeypatch):
        self.batches: list[int] = []
        original = model.forward

        def forward(x, *args, **kwargs):
            self.batches.append(x.shape[0])
            return original(x, *args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)


def diffusers_residuals(reference, x, t, context, hint):
    with torch.no_grad():
        down, mid = reference(x, t, context, hint, return_dict=False)
    return list(down) + [mid]


def stack_residuals(result):
    return [result.skips[i] for i in range(len(result.skips))] + [result.middle]


def duplicated_inputs(seed: int = 123):
    """cond + uncond rows that carry the same latent, timestep and text (one row repeated)."""
    one = make_inputs("sd1", batch=1, seed=seed)
    return (one.x.repeat(2, 1, 1, 1), one.timesteps.repeat(2), one.context.repeat(2, 1, 1),
            one.hint.repeat(2, 1, 1, 1), one.hint.movedim(1, -1))


# ---- exact: identical rows computed once -----------------------------------------------------------------

def test_controlnet_rows_with_identical_inputs_run_once_and_match_diffusers_bit_for_bit(nets, monkeypatch):
    """Both rows get, bit for bit, what diffusers gives for that row run alone. (A batch-2 run differs
    from it in the last bits, diffusers' own too: CPU kernels sum in a batch-dependent order.)"""
    reference, ours = nets
    x, t, context, hint, image = duplicated_inputs()
    counter = RowCounter(ours, monkeypatch)
    got = ControlStack([ControlEntry(ours, image)]).contributions(x, t, context, chunk_kinds=[0, 1])
    assert counter.batches == [1]  # the uncond row repeats the cond row: one row computed
    alone = diffusers_residuals(reference, x[:1], t[:1], context[:1], hint[:1])
    for a, row in zip(stack_residuals(got), alone):
        assert torch.equal(a[0], row[0]) and torch.equal(a[1], row[0])


def test_rows_that_differ_anywhere_are_all_computed(nets, monkeypatch):
    reference, ours = nets
    x, t, context, hint, image = duplicated_inputs()
    counter = RowCounter(ours, monkeypatch)
    stack = ControlStack([ControlEntry(ours, image)])
    changed_context = context.clone()
    changed_context[1, 0, 0] += 1.0  # one number of the negative prompt
    changed_t = t.clone()
    changed_t[1] += 1.0
    for args in ((x, t, changed_context), (x, changed_t, context)):
        got = stack.contributions(*args, chunk_kinds=[0, 1])
        # Tolerance: the hint block ran on the one frame here, on two rows in diffusers (batch-dependent rounding).
        for a, b in zip(stack_residuals(got), diffusers_residuals(reference, *args, hint)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert counter.batches == [2, 2]


def test_two_frames_are_two_rows_even_with_identical_latents(nets, monkeypatch):
    reference, ours = nets
    x, t, context, _, _ = duplicated_inputs()
    frames = make_inputs("sd1", batch=2, seed=9).hint
    counter = RowCounter(ours, monkeypatch)
    got = ControlStack([ControlEntry(ours, frames.movedim(1, -1))]).contributions(x, t, context)
    assert counter.batches == [2]
    for a, b in zip(stack_residuals(got), diffusers_residuals(reference, x, t, context, frames)):
        assert torch.equal(a, b)


def test_controlnext_cond_and_uncond_rows_run_once_and_match_the_released_injection():
    from controlnet_core import ControlNeXtModel
    from controlnet_core.controlnext.config import SD15
    from tests.diffusers_oracle import unet_with_contribution
    from tests.factories import make_diffusers_unet
    from tests.test_controlnext import (INJECTION, MODULE_A_CONFIG, ReferenceModuleA, _reference_unet_output,
                                        layout_of, reference_state)

    unet_name, channels = INJECTION[SD15]
    reference = ReferenceModuleA(channels)
    ours = ControlNeXtModel(type(MODULE_A_CONFIG)(**{**MODULE_A_CONFIG.__dict__, "final_out_channels": channels}))
    ours.load_state_dict(reference_state(reference, seed=5))
    ours.eval()
    unet = make_diffusers_unet(unet_name, seed=4)
    inputs = make_inputs(unet_name, batch=4)
    inputs.timesteps = torch.full((4,), 421.0)  # one step: cond and uncond rows share the timestep
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))  # the memory layout of both sides

    def one_row_reference(images, timesteps):  # the released module on one row, its feature given to all four
        out = reference(images[:1], timesteps[:1])
        return {**out, "out": out["out"].expand(len(timesteps), -1, -1, -1)}

    expected = _reference_unet_output(SD15, unet, one_row_reference, hint, inputs, 0.8)
    batches = []
    original = ours.forward
    ours.forward = lambda hint, t: batches.append(hint.shape[0]) or original(hint, t)
    contribution = ControlStack([ControlEntry(ours, hint.movedim(1, -1), strength=0.8)]).contributions(
        inputs.x, inputs.timesteps, inputs.context, layout=layout_of(unet_name), chunk_kinds=[0, 1])
    got = unet_with_contribution(unet, contribution, inputs.x, inputs.timesteps, inputs.context, None)
    assert batches == [1]  # four rows (two latents, cond and uncond), one image, one timestep
    assert torch.equal(got, expected)


def test_unique_rows_groups_by_every_declared_input_and_the_frame():
    x = torch.zeros(4, 4, 2, 2)
    context = torch.zeros(4, 3, 8)
    context[3] += 1
    call = UNetCall(x, torch.full((4,), 7.0), context)
    assert unique_rows(call, torch.tensor([0, 0, 1, 0]), ("x", "timesteps", "context")) == ([0, 2, 3], [0, 0, 1, 2])
    assert unique_rows(call, torch.tensor([0, 0, 0, 0]), ("x",)) == ([0], [0, 0, 0, 0])
    assert unique_rows(call, torch.tensor([0, 1, 2, 3]), ("x",)) is None


def test_an_entry_whose_weights_are_all_zero_costs_nothing(nets, monkeypatch):
    _, ours = nets
    x, t, context, _, image = duplicated_inputs()
    counter = RowCounter(ours, monkeypatch)
    zero = ControlEntry(ours, image, weights=[0.0] * len(ours.slots))
    assert ControlStack([zero]).contributions(x, t, context) is None
    assert counter.batches == []


# ---- not exact: residual reuse ---------------------------------------------------------------------------

def schedule_inputs(timesteps):
    """One latent per step (cond + uncond rows, distinct prompts), as a sampler feeds them."""
    base = make_inputs("sd1", batch=2, seed=41)
    generator = torch.Generator().manual_seed(42)
    return [(torch.randn(base.x.shape, generator=generator), torch.full((2,), float(t)), base.context, base.hint)
            for t in timesteps]


def image_of(hint: torch.Tensor) -> torch.Tensor:
    """An IMAGE view of the hint's memory: the hint block then runs on the layout and batch diffusers sees."""
    return hint.movedim(1, -1)


@pytest.mark.parametrize("policy, timesteps, computed", [
    (ReusePolicy(every=2), [999, 899, 799, 699, 599], [0, 2, 4]),
    (ReusePolicy(every=3), [999, 899, 799, 699, 599], [0, 3]),
    (ReusePolicy(moved=0.15), [999, 949, 899, 849, 799, 599, 579], [0, 3, 5]),  # 150 after step 0; 200 ≥ 150
])
def test_reuse_recomputes_on_schedule_and_hands_back_the_last_computed_residuals(nets, monkeypatch, policy,
                                                                                   timesteps, computed):
    reference, ours = nets
    steps = schedule_inputs(timesteps)
    image = image_of(steps[0][3])
    counter = RowCounter(ours, monkeypatch)
    stack = ControlStack([ControlEntry(ours, image, strength=0.5, reuse=policy)])
    last = None
    for step, (x, t, context, hint) in enumerate(steps):
        got = stack.contributions(x, t, context)  # two latents, frames 0 and 1
        if step in computed:
            last = step
        x_used, t_used, _, _ = steps[last]
        expected = diffusers_residuals(reference, x_used, t_used, context, hint)
        for a, b in zip(stack_residuals(got), expected):
            torch.testing.assert_close(a, 0.5 * b, rtol=0, atol=0)  # strength applied to the stored residuals
    assert len(counter.batches) == len(computed)


def test_reuse_never_crosses_a_new_generation_a_new_prompt_or_a_new_size(nets, monkeypatch):
    _, ours = nets
    (x, t, context, hint), (x2, t2, _, _) = schedule_inputs([999, 899])
    counter = RowCounter(ours, monkeypatch)
    stack = ControlStack([ControlEntry(ours, hint[:1].movedim(1, -1), reuse=ReusePolicy(every=4))])
    stack.contributions(x, t, context)
    stack.contributions(x2, t2, context)          # reused (1 computation so far)
    stack.contributions(x2, t2, context)          # another call of the same step: reused
    stack.contributions(x, t, context)            # the timestep rose: a new generation
    stack.contributions(x2, t2, context + 1.0)    # another prompt
    small = make_inputs("sd1", batch=2, latent_size=4)
    stack.contributions(small.x, t2, context)     # another latent size
    assert len(counter.batches) == 4


@pytest.mark.parametrize("off", ["range", "keyframe"])
def test_reuse_never_crosses_a_step_at_which_the_entry_was_off(nets, monkeypatch, off):
    """Every 4 steps, on at steps 0, 1, 3, 4 and off at step 2 (outside its range, or faded out by a
    keyframe): step 3 must compute anew, not hand back step 0's residuals (three steps seen)."""
    from controlnet_core.keyframes import Keyframe, KeyframeGroup

    reference, ours = nets
    steps = schedule_inputs([999, 899, 799, 699, 599])
    image = image_of(steps[0][3])
    counter = RowCounter(ours, monkeypatch)
    percents = [0.0, 0.25, 0.5, 0.75, 1.0]
    if off == "range":
        entry = ControlEntry(ours, image, reuse=ReusePolicy(every=4))
        active = [True, True, False, True, True]
        options = [{"active": (lambda e, on=on: on)} for on in active]
    else:
        fade = KeyframeGroup([Keyframe(0.0, strength=1.0), Keyframe(0.5, strength=0.0), Keyframe(0.75, strength=1.0)])
        entry = ControlEntry(ours, image, reuse=ReusePolicy(every=4), keyframes=fade)
        options = [{"percent": p} for p in percents]
    stack = ControlStack([entry])
    results = [stack.contributions(x, t, context, **option) for (x, t, context, _), option in zip(steps, options)]
    assert results[2] is None
    for step, source in ((0, 0), (1, 0), (3, 3), (4, 3)):
        x, t, context, hint = steps[source]
        for a, b in zip(stack_residuals(results[step]), diffusers_residuals(reference, x, t, context, hint)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(counter.batches) == 2


def test_exact_is_the_default_everywhere_and_names_are_checked():
    assert ControlEntry.__dataclass_fields__["reuse"].default is None
    assert list(SPEED_MODES)[0] == "exact" and SPEED_MODES["exact"].exact
    assert not any(policy.exact for name, policy in SPEED_MODES.items() if name != "exact")
    with pytest.raises(InputError, match="speed_mode: expected one of .*'exact'.*found 'turbo'"):
        speed_mode("turbo")
    with pytest.raises(InputError, match="whole number of steps ≥ 1, found 0"):
        ReusePolicy(every=0)
    with pytest.raises(InputError, match=r"fraction of the timestep range in \(0, 1\], found 2"):
        ReusePolicy(moved=2)


# ---- the per-entry switch in the nodes -----------------------------------------------------------------

def test_speed_mode_is_per_entry_in_both_apply_nodes(monkeypatch, tmp_path):
    from comfy_stub import import_nodes
    from tests.test_controlnet_nodes import (FakeModelSampling, conditioning, fake_base_model, loaded, make_probe,
                                             stack_inputs)

    nodes = import_nodes(monkeypatch, tmp_path)
    calls = {"pose": 0, "depth": 0}

    def counted(name):
        probe = make_probe(("middle",))
        original = probe.additions
        probe.additions = lambda *args: calls.__setitem__(name, calls[name] + 1) or original(*args)
        return loaded(nodes, probe, name)

    image = torch.rand(1, 32, 32, 3)
    positive, _, _ = nodes.MultiControlStack().apply(conditioning(), conditioning(), None, **stack_inputs(
        control_net_1=counted("pose"), image_1=image, speed_mode_1="fast: reuse 2 steps",
        control_net_2=counted("depth"), image_2=image))
    control = positive[0][1]["control"]
    sampling = FakeModelSampling()
    control.pre_run(fake_base_model(), sampling.percent_to_sigma)
    context = torch.randn(2, 5, 768, generator=torch.Generator().manual_seed(3))
    for percent in (0.0, 0.25, 0.5, 0.75):  # four steps
        sigma = torch.full((2,), sampling.percent_to_sigma(percent))
        control.get_control(torch.zeros(2, 4, 4, 4), sigma, {"c_crossattn": context}, 2, {"cond_or_uncond": [0, 1]})
    assert calls == {"pose": 2, "depth": 4}  # pose reuses every other step, depth stays exact
    with pytest.raises(nodes.InputError, match="ApplyControlNet: speed_mode: expected one of"):
        nodes.ApplyControlNet().apply(conditioning(), conditioning(), counted("pose"), image, 1.0, 0.0, 1.0,
                                      speed_mode="fastest")
