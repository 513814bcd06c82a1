"""ControlStack and hint preparation: schedule, strength, masks, batches, caching, resize modes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from controlnet_core import ControlEntry, ControlStack, InputError, load_controlnet, prepare_hint
from controlnet_core.hint import center_crop_to_aspect
from tests.factories import ldm_state_dict, make_diffusers_controlnet, make_inputs, tiny_config


@pytest.fixture(scope="module")
def model():
    return load_controlnet(ldm_state_dict(make_diffusers_controlnet("sd1", seed=5)), overrides={"num_heads": 8})


@pytest.fixture(scope="module")
def second_model():
    return load_controlnet(ldm_state_dict(make_diffusers_controlnet("sd1", seed=6)), overrides={"num_heads": 8})


@pytest.fixture()
def inputs():
    return make_inputs("sd1", batch=2)


def image_of(hint: torch.Tensor) -> torch.Tensor:
    """B×C×H×W hint → a B×H×W×C IMAGE view of the same memory, so the stack's hint is laid out like
    `hint` itself (convolution kernels, hence the last bits, depend on the layout)."""
    return hint.movedim(1, -1)


class CountingForward:
    """Counts model forwards and hint-block runs without changing results."""

    def __init__(self, model, monkeypatch):
        self.forwards = 0
        self.hint_runs = 0
        original_forward, original_embed = model.forward, model.embed_hint

        def forward(*args, **kwargs):
            self.forwards += 1
            return original_forward(*args, **kwargs)

        def embed(*args, **kwargs):
            self.hint_runs += 1
            return original_embed(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)
        monkeypatch.setattr(model, "embed_hint", embed)


def flat(res):
    return res.down + [res.mid]


def test_single_entry_equals_scaled_model_output(model, inputs):
    entry = ControlEntry(model, image_of(inputs.hint), strength=0.7)
    got = ControlStack([entry]).residuals(inputs.x, inputs.timesteps, inputs.context)
    with torch.no_grad():
        direct = model(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
    assert len(got.down) == tiny_config("sd1").num_down_residuals
    for a, b in zip(flat(got), flat(direct)):
        torch.testing.assert_close(a, 0.7 * b, rtol=1e-5, atol=1e-6)


def test_two_entries_sum_with_their_own_weights(model, second_model, inputs):
    n = tiny_config("sd1").num_down_residuals + 1
    weights = [0.5 + i / n for i in range(n)]
    a = ControlEntry(model, image_of(inputs.hint), strength=1.0, weights=weights)
    b = ControlEntry(second_model, image_of(inputs.hint.flip(-1)), strength=0.4)
    got = ControlStack([a, b]).residuals(inputs.x, inputs.timesteps, inputs.context)
    with torch.no_grad():
        ra = model(inputs.x, inputs.hint, inputs.timesteps, inputs.context)
        rb = second_model(inputs.x, inputs.hint.flip(-1), inputs.timesteps, inputs.context)
    for i, (g, x, y) in enumerate(zip(flat(got), flat(ra), flat(rb))):
        torch.testing.assert_close(g, weights[i] * x + 0.4 * y, rtol=1e-5, atol=1e-5)


def test_entries_outside_their_range_or_at_zero_cost_nothing(model, inputs, monkeypatch):
    counter = CountingForward(model, monkeypatch)
    stack = ControlStack([ControlEntry(model, image_of(inputs.hint), start=0.2, end=0.6),
                          ControlEntry(model, image_of(inputs.hint), strength=0.0),
                          ControlEntry(model, image_of(inputs.hint), enabled=False)])
    assert stack.residuals(inputs.x, inputs.timesteps, inputs.context, percent=0.1) is None
    assert stack.residuals(inputs.x, inputs.timesteps, inputs.context, percent=0.7) is None
    assert counter.forwards == 0 and counter.hint_runs == 0
    assert stack.residuals(inputs.x, inputs.timesteps, inputs.context, percent=0.4) is not None
    assert counter.forwards == 1
    # A caller-supplied predicate (the host's sigma test) overrides the percent test.
    assert stack.residuals(inputs.x, inputs.timesteps, inputs.context, active=lambda e: False) is None
    assert counter.forwards == 1


def test_hint_block_runs_once_across_steps_and_reruns_when_inputs_change(model, inputs, monkeypatch):
    counter = CountingForward(model, monkeypatch)
    entry = ControlEntry(model, image_of(inputs.hint))
    stack = ControlStack([entry])
    for step in range(5):
        stack.residuals(inputs.x, inputs.timesteps * (1 - step / 10), inputs.context)
    assert counter.forwards == 5 and counter.hint_runs == 1
    bigger = make_inputs("sd1", batch=2, latent_size=16)
    stack.residuals(bigger.x, bigger.timesteps, bigger.context)  # new latent size
    assert counter.hint_runs == 2
    entry.image.mul_(0.5)  # edited in place: the cache must notice
    stack.residuals(bigger.x, bigger.timesteps, bigger.context)
    assert counter.hint_runs == 3
    entry.image = image_of(inputs.hint)  # a new image
    stack.residuals(bigger.x, bigger.timesteps, bigger.context)
    assert counter.hint_runs == 4


def test_cached_hint_gives_the_same_residuals_as_recomputing(model, inputs):
    entry = ControlEntry(model, image_of(inputs.hint))
    stack = ControlStack([entry])
    first = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
    second = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
    entry.clear_cache()
    third = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
    for a, b, c in zip(flat(first), flat(second), flat(third)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_mask_is_resized_to_each_residual_and_multiplied(model, inputs):
    size = inputs.hint.shape[-1]
    mask = torch.zeros(size, size)
    mask[:, : size // 2] = 1.0  # left half on
    mask[:, size // 2: size // 2 + 8] = 0.5  # a soft band
    plain = ControlStack([ControlEntry(model, image_of(inputs.hint))]).residuals(inputs.x, inputs.timesteps, inputs.context)
    masked = ControlStack([ControlEntry(model, image_of(inputs.hint), mask=mask)]).residuals(
        inputs.x, inputs.timesteps, inputs.context)
    for p, m in zip(flat(plain), flat(masked)):
        expected = p * F.interpolate(mask[None, None], size=p.shape[-2:], mode="area")
        torch.testing.assert_close(m, expected, rtol=1e-5, atol=1e-6)
    full_res = masked.down[0]  # latent resolution: the right-most column lies wholly outside the mask
    assert full_res[..., -1].abs().max() == 0 and full_res[..., 0].abs().max() > 0


def test_mask_that_cannot_match_is_refused(model, inputs):
    entry = ControlEntry(model, image_of(inputs.hint), mask=torch.ones(37, 50))
    with pytest.raises(InputError, match="mask is 37×50"):
        ControlStack([entry]).residuals(inputs.x, inputs.timesteps, inputs.context)
    four = make_inputs("sd1", batch=4)
    entry = ControlEntry(model, image_of(four.hint), mask=torch.ones(3, *four.hint.shape[-2:]))
    with pytest.raises(InputError, match="mask batch of 3 does not pair with the latent batch of 4"):
        ControlStack([entry]).residuals(four.x, four.timesteps, four.context)
    with pytest.raises(InputError, match="mask"):
        ControlEntry(model, image_of(inputs.hint), mask=torch.ones(1, 2, 3, 4, 5))


def test_hint_batches_broadcast_pair_or_fail(model):
    inputs = make_inputs("sd1", batch=4)
    images = image_of(inputs.hint)
    # Batch of 1 broadcasts to every latent.
    one = ControlStack([ControlEntry(model, images[:1])]).residuals(inputs.x, inputs.timesteps, inputs.context)
    with torch.no_grad():
        direct = model(inputs.x, inputs.hint[:1].expand(4, -1, -1, -1), inputs.timesteps, inputs.context)
    torch.testing.assert_close(one.mid, direct.mid, rtol=1e-5, atol=1e-5)
    # A latent batch of 2 sent as cond + uncond chunks pairs a hint batch of 2 with each chunk.
    paired = ControlStack([ControlEntry(model, images[:2])]).residuals(
        inputs.x, inputs.timesteps, inputs.context, chunk_kinds=[0, 1])
    with torch.no_grad():
        direct = model(inputs.x, inputs.hint[:2].repeat(2, 1, 1, 1), inputs.timesteps, inputs.context)
    torch.testing.assert_close(paired.mid, direct.mid, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="control image batch of 3 does not pair with the latent batch of 4"):
        ControlStack([ControlEntry(model, images[:3])]).residuals(inputs.x, inputs.timesteps, inputs.context)


def test_uncond_strength_zero_runs_cond_rows_only(model, inputs, monkeypatch):
    entry = ControlEntry(model, image_of(inputs.hint[:1]), uncond_strength=0.0)
    seen_batches = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda x, *a, **k: seen_batches.append(x.shape[0]) or original(x, *a, **k))
    res = ControlStack([entry]).residuals(inputs.x, inputs.timesteps, inputs.context, chunk_kinds=[0, 1])
    assert seen_batches == [1]  # only the cond row ran
    for r in flat(res):
        assert r[1].abs().max() == 0 and r[0].abs().max() > 0
    with torch.no_grad():
        direct = original(inputs.x[:1], inputs.hint[:1], inputs.timesteps[:1], inputs.context[:1])
    torch.testing.assert_close(res.mid[:1], direct.mid, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strength", [float("nan"), -0.5, float("inf"), 11.0])
def test_bad_strength_is_refused(model, inputs, strength):
    with pytest.raises(InputError, match="strength"):
        ControlEntry(model, image_of(inputs.hint), strength=strength)


def test_bad_range_and_weights_are_refused(model, inputs):
    with pytest.raises(InputError, match="start"):
        ControlEntry(model, image_of(inputs.hint), start=0.8, end=0.2)
    with pytest.raises(InputError, match="end"):
        ControlEntry(model, image_of(inputs.hint), end=1.5)
    with pytest.raises(InputError, match="weights: expected"):
        ControlEntry(model, image_of(inputs.hint), weights=[1.0, 2.0])


# ----------------------------------------------------------------------------------------- hints

def test_grayscale_and_rgba_hints_are_converted():
    gray = torch.rand(1, 24, 32, 1)
    out = prepare_hint(gray, 24, 32)
    assert out.shape == (1, 3, 24, 32)
    assert torch.equal(out[:, 0], gray[..., 0]) and torch.equal(out[:, 2], gray[..., 0])
    rgba = torch.rand(2, 24, 32, 4)
    assert torch.equal(prepare_hint(rgba, 24, 32), rgba[..., :3].movedim(-1, 1))
    hw = np.full((24, 32), 255, dtype=np.uint8)  # a plain 2-D uint8 array is a grayscale image
    assert torch.equal(prepare_hint(hw, 24, 32), torch.ones(1, 3, 24, 32))
    one_channel = prepare_hint(torch.rand(1, 8, 8, 3), 8, 8, channels=1)
    assert one_channel.shape == (1, 1, 8, 8)


def test_bad_hint_images_are_refused():
    with pytest.raises(InputError, match="channels"):
        prepare_hint(torch.rand(1, 8, 8, 2), 8, 8)
    with pytest.raises(InputError, match="NaN"):
        prepare_hint(torch.full((1, 8, 8, 3), float("nan")), 8, 8)
    with pytest.raises(InputError, match="empty"):
        prepare_hint(torch.rand(1, 0, 8, 3), 8, 8)
    with pytest.raises(InputError, match="resize mode"):
        prepare_hint(torch.rand(1, 8, 8, 3), 8, 8, mode="stretch")
    with pytest.raises(InputError, match=r"the image is 1×1 pixels, too small .* at least 8×8"):
        prepare_hint(torch.rand(1, 1, 1, 3), 64, 64)
    prepare_hint(torch.rand(1, 8, 300, 3), 64, 64)  # thin but usable


def test_just_resize_stretches_any_size():
    image = torch.zeros(1, 30, 90, 3)
    image[:, :, :45] = 1.0  # left half white
    out = prepare_hint(image, 64, 64, mode="just_resize")
    assert out.shape == (1, 3, 64, 64)
    assert out[0, 0, :, :32].min() == 1 and out[0, 0, :, 32:].max() == 0


def test_crop_and_resize_keeps_the_centre():
    image = torch.zeros(1, 40, 120, 3)  # 3:1 image into a square: the outer thirds are cut
    image[:, :, 40:80] = 1.0
    out = prepare_hint(image, 64, 64, mode="crop_and_resize")
    assert out.min() == 1.0
    # The crop is symmetric and exact for integral cases.
    assert center_crop_to_aspect(torch.zeros(1, 1, 40, 120), 64, 64).shape[-2:] == (40, 40)
    assert center_crop_to_aspect(torch.zeros(1, 1, 120, 40), 32, 64).shape[-2:] == (20, 40)


def test_resize_and_fill_letterboxes_with_the_edge_median():
    image = torch.full((1, 20, 40, 3), 0.25)
    image[:, 5:15, 10:30] = 1.0
    out = prepare_hint(image, 64, 64, mode="resize_and_fill")
    assert out.shape == (1, 3, 64, 64)
    # 40 wide → 64 wide, 20 high → 32 high, centred: rows 16..47 hold the image, the rest is fill.
    assert torch.all(out[..., :16, :] == 0.25) and torch.all(out[..., 48:, :] == 0.25)
    assert out[0, 0, 32, 32] == 1.0
    assert math.isclose(float(out[0, 0, 16, 0]), 0.25)


def test_stack_runs_on_inference_tensors(model, inputs):
    # The host runs nodes and the sampler under torch.inference_mode(): images arrive as inference tensors.
    with torch.inference_mode():
        image = image_of(inputs.hint) * 1.0
        stack = ControlStack([ControlEntry(model, image)])
        first = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
        second = stack.residuals(inputs.x, inputs.timesteps, inputs.context)
    assert image.is_inference()
    assert torch.equal(first.mid, second.mid)


def test_context_batch_of_one_serves_every_latent(model, inputs):
    with torch.no_grad():
        shared = model(inputs.x, inputs.hint, inputs.timesteps, inputs.context[:1])
        repeated = model(inputs.x, inputs.hint, inputs.timesteps, inputs.context[:1].expand(2, -1, -1).contiguous())
    torch.testing.assert_close(shared.mid, repeated.mid, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="text context has batch 3"):
        model(inputs.x, inputs.hint, inputs.timesteps, inputs.context[:1].expand(3, -1, -1))
