"""ControlStack over the control-system protocol, with a probe system whose additions are known
numbers: every value below is derived by hand from the rules in stack.py / protocol.py / modes.py.

The probe adds, for each of its targets, a tensor whose value at every element is
(frame index + 1) · 10^slot, so the scaling, the frame each row uses and the slot weights can be
read straight off the result.
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core import ControlEntry, ControlStack, InputError
from controlnet_core.modes import MODE_BALANCED, MODE_CONTROLNET, MODE_PROMPT, controlnet_soft_weights, mode_settings
from controlnet_core.protocol import Addition, ControlModel, HintSpec, Target

LATENT = 4


class Probe(ControlModel):
    system = "Probe"

    def __init__(self, targets: list[Target], soft_weights=None, family: str = "sd1") -> None:
        super().__init__()
        self.targets = targets
        self.soft_weights = soft_weights
        self._family = family
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.prepared_calls = 0

    @property
    def family(self) -> str:
        return self._family

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f"slot {i}" for i in range(len(self.targets)))

    def hint_spec(self, h: int, w: int) -> HintSpec:
        return HintSpec(h * 8, w * 8, 3)

    def prepare(self, hint: torch.Tensor) -> torch.Tensor:
        self.prepared_calls += 1
        return torch.arange(hint.shape[0], dtype=torch.float32) + 1  # frame index + 1

    def additions(self, call, prepared, frames):
        per_row = prepared[frames].view(-1, 1, 1, 1)
        out = []
        for slot, target in enumerate(self.targets):
            value = per_row * 10.0 ** slot * torch.ones(len(frames), 2, LATENT, LATENT)
            if target.kind in ("stream", "stream_middle"):
                out.append(Addition(target, slot, lambda hidden, v=value: v + 0 * hidden))
            else:
                out.append(Addition(target, slot, value))
        return out


def run(entries, batch=2, chunk_kinds=(0, 1)):
    x = torch.zeros(batch, 4, LATENT, LATENT)
    return ControlStack(entries).contributions(x, torch.full((batch,), 500.0), torch.zeros(batch, 3, 8),
                                               chunk_kinds=list(chunk_kinds))


def frames_image(count: int) -> torch.Tensor:
    return torch.rand(count, 32, 32, 3)


def row_values(tensor: torch.Tensor) -> list[float]:
    return [float(t.flatten()[0]) for t in tensor]


# ---- frames pair with latents the same way whatever the chunks are (issue: bug 2) ---------------------

@pytest.mark.parametrize("uncond_strength", [1.0, 0.0])
def test_two_frames_for_one_latent_use_frame_0_on_every_row(uncond_strength):
    """The host's broadcast_image_to: per chunk, the first `per_chunk` frames. A 2-frame image against
    one latent (cond + uncond rows) gives frame 0 to both rows, and the same when uncond is skipped."""
    probe = Probe([Target.skip(0)])
    result = run([ControlEntry(probe, frames_image(2), uncond_strength=uncond_strength)])
    assert row_values(result.skips[0]) == [1.0, 1.0 * uncond_strength]


@pytest.mark.parametrize("chunk_kinds", [(0, 1), (1, 0), (0,), (1,)])
def test_pairing_is_the_same_in_every_chunk(chunk_kinds):
    probe = Probe([Target.skip(0)])
    per_chunk = 4
    result = run([ControlEntry(probe, frames_image(2))], batch=per_chunk * len(chunk_kinds), chunk_kinds=chunk_kinds)
    assert row_values(result.skips[0]) == [1.0, 2.0, 1.0, 2.0] * len(chunk_kinds)  # 2 frames repeat in turn


def test_frame_counts_that_cannot_pair_are_refused_naming_both():
    probe = Probe([Target.skip(0)])
    with pytest.raises(InputError, match="control image batch of 3 does not pair with the latent batch of 4"):
        run([ControlEntry(probe, frames_image(3))], batch=8)
    with pytest.raises(InputError, match="mask batch of 3 does not pair with the latent batch of 4"):
        run([ControlEntry(probe, frames_image(1), mask=torch.ones(3, 32, 32))], batch=8)
    # More frames than latents: the first ones, as the host does.
    assert row_values(run([ControlEntry(probe, frames_image(6))], batch=8).skips[0]) == [1, 2, 3, 4] * 2


# ---- strength, slot weights and modes, for any system -------------------------------------------------

def test_strength_and_per_slot_weights_scale_each_slot():
    probe = Probe([Target.skip(0), Target.encoder(1), Target.middle()])
    result = run([ControlEntry(probe, frames_image(1), strength=0.5, weights=[2.0, 0.0, 4.0])])
    assert row_values(result.skips[0]) == [1.0, 1.0]          # 1 · 10^0 · 0.5 · 2
    assert row_values(result.encoder[1]) == [0.0, 0.0]        # weight 0
    assert row_values(result.middle) == [200.0, 200.0]        # 1 · 10^2 · 0.5 · 4


def test_entries_of_any_systems_sum_per_target_and_stream_functions_see_the_same_hidden_state():
    a = Probe([Target.skip(0), Target.stream(0)])
    b = Probe([Target.encoder(2), Target.skip(0), Target.stream(0)])
    result = run([ControlEntry(a, frames_image(1), strength=1.0), ControlEntry(b, frames_image(1), strength=0.1)])
    assert row_values(result.skips[0]) == pytest.approx([1.0 + 0.1 * 10.0] * 2)
    assert row_values(result.encoder[2]) == pytest.approx([0.1] * 2)
    hidden = torch.zeros(2, 2, LATENT, LATENT)
    assert row_values(result.stream_addition(0, hidden)) == pytest.approx([10.0 + 0.1 * 100.0] * 2)


def test_weights_that_do_not_fit_the_system_are_refused_naming_its_slots():
    probe = Probe([Target.skip(0), Target.middle()])
    with pytest.raises(InputError, match=r"expected 2 finite numbers ≥ 0 for this Probe \(slot 0, slot 1\)"):
        ControlEntry(probe, frames_image(1), weights=[1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="finite"):
        ControlEntry(probe, frames_image(1), weights=[1.0, float("nan")])


def test_soft_weights_are_a1111s_per_family():
    """A1111/Forge: [0.825 ** (12 - i) for i in range(13)], cut to 10 for SDXL (so SDXL's middle gets
    0.825^3 = 0.5615); the T2I-Adapter's features 0.25, 0.62, 0.825, 1."""
    sd15 = [0.825 ** (12 - i) for i in range(13)]
    assert list(controlnet_soft_weights(13)) == sd15 and sd15[-1] == 1.0
    sdxl = list(controlnet_soft_weights(10))
    assert sdxl == sd15[:10] and sdxl[-1] == pytest.approx(0.561515625) and sdxl[0] == pytest.approx(0.09941, rel=1e-3)
    assert mode_settings(MODE_PROMPT, (0.25, 0.62, 0.825, 1.0)).weights == (0.25, 0.62, 0.825, 1.0)


def test_modes_apply_soft_weights_and_skip_uncond_rows():
    probe = Probe([Target.skip(0), Target.middle()], soft_weights=(0.5, 1.0))
    prompt = run([ControlEntry(probe, frames_image(1), mode=MODE_PROMPT)])
    assert row_values(prompt.skips[0]) == [0.5, 0.5] and row_values(prompt.middle) == [10.0, 10.0]
    controlnet = run([ControlEntry(probe, frames_image(1), mode=MODE_CONTROLNET)], chunk_kinds=(1, 0))
    assert row_values(controlnet.skips[0]) == [0.0, 0.5]  # row 0 is uncond: not controlled
    balanced = run([ControlEntry(probe, frames_image(1), mode=MODE_BALANCED)])
    assert row_values(balanced.skips[0]) == [1.0, 1.0]


def test_systems_without_soft_weights_refuse_prompt_mode_but_take_cond_only():
    probe = Probe([Target.stream(0)])  # like ControlNeXt: one feature
    with pytest.raises(InputError, match="'prompt is more important' scales per-block weights, which Probe does not"):
        ControlEntry(probe, frames_image(1), mode=MODE_PROMPT)
    result = run([ControlEntry(probe, frames_image(1), mode=MODE_CONTROLNET)], chunk_kinds=(0, 1))
    assert row_values(result.stream_addition(0, torch.zeros(2, 2, LATENT, LATENT))) == [1.0, 0.0]


def test_uncond_rows_that_are_not_controlled_are_not_computed():
    seen = []
    probe = Probe([Target.skip(0)])
    original = probe.additions
    probe.additions = lambda call, prepared, frames: seen.append(call.x.shape[0]) or original(call, prepared, frames)
    run([ControlEntry(probe, frames_image(1), uncond_strength=0.0)], batch=4, chunk_kinds=(0, 1))
    assert seen == [2]  # the two cond rows only


# ---- masks on every kind of target --------------------------------------------------------------------

def test_mask_multiplies_tensor_and_stream_additions_at_their_resolution():
    probe = Probe([Target.skip(0), Target.stream(0)])
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1.0  # left half of a 4×4 latent: columns 0, 1
    result = run([ControlEntry(probe, frames_image(1), mask=mask)])
    for added in (result.skips[0], result.stream_addition(0, torch.zeros(2, 2, LATENT, LATENT))):
        assert added[..., :2].min() > 0 and added[..., 2:].abs().max() == 0


def test_per_frame_masks_pair_like_the_images():
    probe = Probe([Target.skip(0)])
    masks = torch.stack([torch.ones(32, 32), torch.zeros(32, 32)])
    result = run([ControlEntry(probe, frames_image(2), mask=masks)], batch=4, chunk_kinds=(0, 1))
    assert row_values(result.skips[0]) == [1.0, 0.0, 1.0, 0.0]  # frame 1's mask is empty


# ---- ranges and caching ---------------------------------------------------------------------------------

def test_entries_outside_their_range_cost_nothing_and_prepare_runs_once():
    probe = Probe([Target.skip(0)])
    stack = ControlStack([ControlEntry(probe, frames_image(1), start=0.2, end=0.6)])
    x, t, context = torch.zeros(2, 4, LATENT, LATENT), torch.full((2,), 1.0), torch.zeros(2, 3, 8)
    assert stack.contributions(x, t, context, percent=0.1) is None
    assert stack.contributions(x, t, context, percent=0.61) is None
    assert probe.prepared_calls == 0
    for percent in (0.2, 0.4, 0.6):  # both ends are inside the range
        assert stack.contributions(x, t, context, percent=percent) is not None
    assert probe.prepared_calls == 1
