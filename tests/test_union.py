"""Union ControlNet (xinsir controlnet-union-sdxl-1.0, 6 types; ProMax, 8 types) against diffusers'
ControlNetUnionModel as the oracle, on tiny SDXL-like configs built in the released key layout.

- one condition: residuals bit-identical to diffusers at any strength (the strength scales the
  residuals, as xinsir and diffusers do for one condition);
- several entries of one file: one forward (counted), bit-identical to diffusers' multi-condition
  call with per-condition scales (each strength scales its condition's token, feature and alpha);
- the condition transformer attends across batch rows, so conditions do not exchange information
  while rows of one call do: both shown on the model and covered by the parity checks, whose
  batches hold different images per row;
- an entry with no type: the hint features added after conv_in with the all-zero type embedding
  (diffusers' modules with the hint added by a hook), the host's "auto";
- step ranges (entries drop out of the fused pass), masks in a fused pass (per-entry on the
  features, their maximum on the residuals: the oracle is diffusers' forward with the fused hint
  written in the test from its own submodules), modes that differ (separate passes);
- file loading, identify, control type names and refusals.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from controlnet_core import ControlEntry, ControlStack, identify, load_control
from controlnet_core.errors import ControlNetError, InputError
from controlnet_core.union import CONTROL_TYPES, UnionControl, control_type_id
from factories import SDXL_ADM_DIM, SDXL_NUM_TIME_IDS, SDXL_TEXT_EMBED_DIM, SDXL_TIME_ID_DIM, randomize_, sdxl_y

LATENT = 8
BATCH = 2

UNION_KWARGS = dict(
    block_out_channels=(64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=(1, 2),         # heads per level: 64 channels per head, the SDXL convention
    use_linear_projection=True,
    norm_num_groups=32,
    addition_embed_type="text_time",
    addition_time_embed_dim=SDXL_TIME_ID_DIM,
    projection_class_embeddings_input_dim=SDXL_ADM_DIM,
    conditioning_embedding_out_channels=(16, 32, 96, 256),   # the released hint encoder
    num_trans_channel=64, num_trans_head=8, num_trans_layer=1, num_proj_channel=64,
)


def make_diffusers_union(types: int, seed: int = 0):
    from diffusers import ControlNetUnionModel

    model = ControlNetUnionModel(num_control_type=types, **UNION_KWARGS)
    randomize_(model, seed)
    with torch.no_grad():  # the released scale of the task embedding (randn · sqrt(320))
        model.task_embedding.mul_(math.sqrt(model.task_embedding.shape[1]) * 20)
    return model.eval()


def state_dict_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=[6, 8], ids=["union", "promax"])
def pair(request):
    reference = make_diffusers_union(request.param, seed=request.param)
    ours = load_control(state_dict_of(reference))
    return reference, ours


@pytest.fixture(scope="module")
def promax():
    reference = make_diffusers_union(8, seed=3)
    return reference, load_control(state_dict_of(reference))


def inputs(seed: int = 0, batch: int = BATCH):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, LATENT, LATENT, generator=generator)
    timesteps = torch.tensor([37.0, 611.0][:batch] + [300.0] * max(0, batch - 2))
    context = torch.randn(batch, 5, 64, generator=generator)
    text = torch.randn(batch, SDXL_TEXT_EMBED_DIM, generator=generator)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).repeat(batch, 1)
    time_ids += torch.randint(0, 64, (batch, SDXL_NUM_TIME_IDS), generator=generator).float() * 8
    return x, timesteps, context, sdxl_y(text, time_ids), {"text_embeds": text, "time_ids": time_ids}


def hint(seed: int, batch: int = BATCH) -> torch.Tensor:
    """Different images per row (B×3×H×W, contiguous): the rows' tokens differ, so the row-axis
    attention of the condition transformer is exercised."""
    return torch.rand(batch, 3, LATENT * 8, LATENT * 8, generator=torch.Generator().manual_seed(seed))


def as_image(h: torch.Tensor) -> torch.Tensor:
    return h.permute(0, 2, 3, 1)  # ComfyUI IMAGE view; the hint the model receives is h itself


def multi_hot(types: int, ids, batch: int = BATCH) -> torch.Tensor:
    out = torch.zeros(batch, types)
    out[:, list(ids)] = 1.0
    return out


def reference_residuals(reference, x, t, context, added, hints, ids, scales):
    with torch.no_grad():
        down, mid = reference(x, t, context, controlnet_cond=hints, control_type=multi_hot(reference.config.num_control_type, ids, x.shape[0]),
                              control_type_idx=list(ids), conditioning_scale=list(scales), added_cond_kwargs=added,
                              return_dict=False)
    return list(down) + [mid]


def our_residuals(stack: ControlStack, x, t, context, y, **options) -> list[torch.Tensor]:
    added = stack.contributions(x, t, context, y, **options)
    return [added.skips[i] for i in range(len(added.skips))] + [added.middle]


def assert_equal(ours, theirs):
    assert len(ours) == len(theirs) == 5  # conv_in, 2 level-0/1 blocks + downsample, middle
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert b.abs().max() > 0, f"residual {index} is zero: the check would prove nothing"
        assert torch.equal(a, b), f"residual {index}: max difference {(a - b).abs().max().item():.3e}"


# ---- loading and identity ---------------------------------------------------------------------------

def test_both_files_load_in_the_diffusers_layout_and_are_identified(tmp_path):
    from safetensors.torch import save_file

    for types, variant in ((6, "6 control types"), (8, "ProMax, 8 control types")):
        path = tmp_path / f"union{types}.safetensors"
        save_file(state_dict_of(make_diffusers_union(types)), str(path))
        identity = identify(path)
        assert (identity.system, identity.variant, identity.family, identity.runs_here) == ("Union", variant, "sdxl", True)
        assert identity.details["control types"].split(", ")[-1] == ("segment" if types == 6 else "repaint")
        model = load_control(path)
        assert isinstance(model, UnionControl) and model.control_type is None
        assert model.network.num_control_types == types
        assert model.network.union_config.channels == 64 and model.network.union_config.layers == 1


def test_the_hosts_ldm_names_load_too(promax):
    """The host's loaded module (ldm names, in_proj as one Linear) gives the same model."""
    from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm
    from controlnet_core.union import load_union

    reference, _ = promax
    union_keys = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")
    state = state_dict_of(reference)
    host_state = diffusers_to_ldm({k: v for k, v in state.items() if not k.startswith(union_keys)})
    host_state.update({k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in state.items()
                       if k.startswith(union_keys)})
    model = load_union(host_state).with_type("normal")
    x, t, context, y, added = inputs(12)
    stack = ControlStack([ControlEntry(model, as_image(hint(80)), strength=0.9)])
    assert_equal(our_residuals(stack, x, t, context, y),
                 reference_residuals(reference, x, t, context, added, [hint(80)], [4], [0.9]))


def test_control_types_by_name_alias_or_id():
    assert [control_type_id(name, 8) for name in CONTROL_TYPES] == list(range(8))
    assert control_type_id("canny", 6) == control_type_id("lineart", 6) == control_type_id("mlsd", 6) == 3
    assert control_type_id("scribble", 6) == control_type_id("ted", 6) == control_type_id("pidi", 6) == 2
    assert control_type_id("anime lineart", 6) == 3 and control_type_id("inpaint", 8) == 7
    assert control_type_id(5, 6) == 5
    with pytest.raises(ControlNetError, match="ProMax"):
        control_type_id("tile", 6)
    with pytest.raises(InputError, match="unknown"):
        control_type_id("sketchy", 8)


def test_views_share_the_networks_weights(promax):
    _, model = promax
    pose, depth = model.with_type("openpose"), model.with_type("depth")
    assert pose.network is depth.network is model.network
    assert pose.fusion_key() == depth.fusion_key() is not None and model.fusion_key() is None
    assert "openpose" in pose.label and pose.system == "Union" and pose.family == "sdxl"


def test_six_type_file_refuses_tile_naming_promax(pair):
    reference, model = pair
    if reference.config.num_control_type == 8:
        assert model.with_type("tile").control_type == 6
    else:
        with pytest.raises(ControlNetError, match="ProMax"):
            model.with_type("tile")


# ---- one condition ------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name, strength", [("openpose", 1.0), ("canny", 0.7), ("segment", 1.3)])
def test_single_type_matches_diffusers(pair, type_name, strength):
    reference, model = pair
    x, t, context, y, added = inputs()
    h = hint(1)
    type_id = CONTROL_TYPES[type_name] if type_name in CONTROL_TYPES else control_type_id(type_name, 6)
    stack = ControlStack([ControlEntry(model.with_type(type_name), as_image(h), strength=strength)])
    assert_equal(our_residuals(stack, x, t, context, y),
                 reference_residuals(reference, x, t, context, added, [h], [type_id], [strength]))


def test_promax_types_match_diffusers(promax):
    reference, model = promax
    x, t, context, y, added = inputs(4)
    for type_name, type_id in (("tile", 6), ("repaint", 7)):
        stack = ControlStack([ControlEntry(model.with_type(type_name), as_image(hint(type_id)), strength=0.9)])
        assert_equal(our_residuals(stack, x, t, context, y),
                     reference_residuals(reference, x, t, context, added, [hint(type_id)], [type_id], [0.9]))


def test_untyped_entry_adds_the_hint_after_conv_in_with_the_zero_type_embedding(promax):
    """No type: the hint encoder's output is added to conv_in's output (a diffusers hook here),
    no condition transformer, and the all-zero multi-hot vector is embedded as usual."""
    reference, model = promax
    x, t, context, y, added = inputs(5)
    h = hint(6)
    with torch.no_grad():
        features = reference.controlnet_cond_embedding(h)
    handle = reference.conv_in.register_forward_hook(lambda module, args, out: out + features)
    try:
        expected = reference_residuals(reference, x, t, context, added, [], [], [])
    finally:
        handle.remove()
    stack = ControlStack([ControlEntry(model, as_image(h), strength=0.6)])
    assert_equal(our_residuals(stack, x, t, context, y), [r * 0.6 for r in expected])


# ---- several conditions in one forward ------------------------------------------------------------------

def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_pose_and_depth_run_in_one_forward_matching_diffusers(pair):
    reference, loaded = pair
    model = load_control(state_dict_of(reference))  # a fresh network: the hooks below stay on it
    forwards, encodes = count_calls(model.network.middle_block), count_calls(model.network.input_hint_block)
    x, t, context, y, added = inputs(2)
    pose, depth = hint(10), hint(11)
    # Stack order depth, pose: conditions still run in type-id order, as the released forward takes them.
    stack = ControlStack([ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5),
                          ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8)])
    expected = reference_residuals(reference, x, t, context, added, [pose, depth], [0, 1], [0.8, 0.5])
    for _ in range(3):  # three steps
        assert_equal(our_residuals(stack, x, t, context, y), expected)
    assert forwards[0] == 3, "one ControlNet forward per step for both entries"
    assert encodes[0] == 2, "the shared hint encoder once per condition per run"


def test_three_types_with_equal_strength_match_diffusers(promax):
    reference, model = promax
    x, t, context, y, added = inputs(7)
    hints = {1: hint(20), 3: hint(21), 6: hint(22)}
    stack = ControlStack([ControlEntry(model.with_type(i), as_image(h)) for i, h in hints.items()])
    assert_equal(our_residuals(stack, x, t, context, y),
                 reference_residuals(reference, x, t, context, added, list(hints.values()), list(hints), [1.0] * 3))


def test_conditions_do_not_exchange_information_but_rows_do(promax):
    """The released condition transformer attends across rows: a condition's alpha does not depend
    on the other conditions, but does depend on the other rows' images."""
    _, model = promax
    network = model.network
    from controlnet_core.union.model import Condition

    def alpha_of_first(conditions):  # fused hint minus the first condition's features = its alpha (+ others)
        with torch.no_grad():
            return network.fused_hint(conditions) - sum(c.features for c in conditions[1:]) - conditions[0].features

    with torch.no_grad():
        pose, depth, other = (network.embed_hint(hint(s)) for s in (30, 31, 32))
    alone = alpha_of_first([Condition(0, pose)])
    with_depth = network.fused_hint([Condition(0, pose), Condition(1, depth)])
    with_other_depth = network.fused_hint([Condition(0, pose), Condition(1, other)])
    # Replacing the depth condition changes the sum by exactly the depth part: pose's part is unchanged.
    depth_part = with_depth - (pose + alone)
    other_part = with_other_depth - (pose + alone)
    tolerance = 1e-5  # float sums in another order
    torch.testing.assert_close(with_depth - depth_part, pose + alone, atol=tolerance, rtol=0)
    torch.testing.assert_close(with_other_depth - other_part, pose + alone, atol=tolerance, rtol=0)
    assert (depth_part - other_part).abs().max() > 1e-3  # the depth part itself did change
    # Rows: changing row 1's image changes row 0's alpha.
    pose_changed = pose.clone()
    pose_changed[1] = 3 * other[1] + 2  # a row whose token is far from row 0's
    changed = alpha_of_first([Condition(0, pose_changed)])
    assert (changed[0] - alone[0]).abs().max() > 1e-3  # rounding alone moves it by < 3e-5


def test_entries_drop_out_of_the_fused_pass_outside_their_range(promax):
    reference, model = promax
    x, t, context, y, added = inputs(8)
    pose, depth = hint(40), hint(41)
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5, end=0.5)])
    assert_equal(our_residuals(stack, x, t, context, y, percent=0.3),
                 reference_residuals(reference, x, t, context, added, [pose, depth], [0, 1], [0.8, 0.5]))
    # Depth is off: pose alone, a single condition, whose strength scales the residuals.
    assert_equal(our_residuals(stack, x, t, context, y, percent=0.7),
                 reference_residuals(reference, x, t, context, added, [pose], [0], [0.8]))


def test_entries_with_different_modes_run_in_separate_passes(promax):
    reference, model = promax
    x, t, context, y, added = inputs(9)
    pose, depth = hint(50), hint(51)
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5,
                                       mode="prompt is more important")])
    soft = stack.entries[1].slot_weights
    assert soft[0] < 1.0
    single_pose = reference_residuals(reference, x, t, context, added, [pose], [0], [0.8])
    single_depth = reference_residuals(reference, x, t, context, added, [depth], [1], [0.5])
    expected = [a + b * w for a, b, w in zip(single_pose, single_depth, soft)]
    for a, b in zip(our_residuals(stack, x, t, context, y), expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # the slot weight multiplies in another order


def test_a_group_sharing_a_fast_mode_reuses_its_one_fused_forward(promax):
    """Both entries reuse every 2 steps: one fused forward at steps 0 and 2, its residuals handed back
    at step 1; at step 3 depth is out of range and pose runs alone (new additions: its strength now
    scales the residuals), reused at step 4. Three forwards in five steps."""
    from controlnet_core.fast import ReusePolicy

    reference, _ = promax
    model = load_control(state_dict_of(reference))  # a fresh network for the hook
    forwards = count_calls(model.network.middle_block)
    x, t, context, y, added = inputs(12)
    pose, depth = hint(60), hint(61)
    every_2 = ReusePolicy(every=2)
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8, reuse=every_2),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5, end=0.5, reuse=every_2)])
    steps = [(x + k, t - 5 * k, 0.2 * k) for k in range(5)]

    def both(k):
        return reference_residuals(reference, steps[k][0], steps[k][1], context, added, [pose, depth], [0, 1], [0.8, 0.5])

    def pose_alone(k):
        return reference_residuals(reference, steps[k][0], steps[k][1], context, added, [pose], [0], [0.8])

    expected = [both(0), both(0), both(2), pose_alone(3), pose_alone(3)]
    for k, (x_k, t_k, percent) in enumerate(steps):
        assert_equal(our_residuals(stack, x_k, t_k, context, y, percent=percent), expected[k])
    assert forwards[0] == 3


def test_entries_with_different_speed_modes_run_in_separate_passes(promax):
    from controlnet_core.fast import ReusePolicy

    reference, _ = promax
    model = load_control(state_dict_of(reference))
    forwards = count_calls(model.network.middle_block)
    x, t, context, y, _ = inputs(13)
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(hint(62)), reuse=ReusePolicy(every=2)),
                          ControlEntry(model.with_type("depth"), as_image(hint(63)))])
    stack.contributions(x, t, context, y)
    assert forwards[0] == 2  # not fused: pose and depth each once
    stack.contributions(x + 1, t - 5, context, y)
    assert forwards[0] == 3  # pose reused, depth (exact) computed


def masked_fused_reference(reference, x, t, context, added, hints, ids, scales, masks):
    """diffusers' forward with the fused hint written here from its own submodules: each condition's
    feature and alpha scaled by its strength and multiplied by its mask (at the latent size)."""
    types = reference.config.num_control_type
    with torch.no_grad():
        sample = reference.conv_in(x)
        conditions = [reference.controlnet_cond_embedding(h) for h in hints]
        tokens = [((c.mean(dim=(2, 3)) + reference.task_embedding[i]) * s).unsqueeze(1)
                  for c, i, s in zip(conditions, ids, scales)]
        tokens = reference.transformer_layes[0](torch.cat(tokens + [sample.mean(dim=(2, 3)).unsqueeze(1)], dim=1))
        fused = sum((c * s + reference.spatial_ch_projs(tokens[:, k])[..., None, None] * s) * m
                    for k, (c, s, m) in enumerate(zip(conditions, scales, masks)))
    handle = reference.conv_in.register_forward_hook(lambda module, args, out: out + fused)
    try:  # scales 0: diffusers' own fused hint is zero; the type vector still has both types
        return reference_residuals(reference, x, t, context, added, hints, ids, [0.0] * len(hints))
    finally:
        handle.remove()


def area(mask: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(mask[:, None], size=(size, size), mode="area")


def test_masks_in_a_fused_pass(promax):
    reference, model = promax
    x, t, context, y, added = inputs(10)
    pose, depth = hint(60), hint(61)
    left = torch.zeros(1, LATENT * 8, LATENT * 8)
    left[..., : LATENT * 4] = 1.0
    top = torch.zeros(1, LATENT * 8, LATENT * 8)
    top[:, : LATENT * 2] = 0.5
    # Pose masked, depth not: the pose features are masked, the residuals are not (depth acts everywhere).
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8, mask=left),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5)])
    expected = masked_fused_reference(reference, x, t, context, added, [pose, depth], [0, 1], [0.8, 0.5],
                                      [area(left, LATENT), 1.0])
    ours = our_residuals(stack, x, t, context, y)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)  # the masked sum is written in another order
    # Both masked: the residuals are multiplied by the pointwise maximum of the two masks.
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8, mask=left),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5, mask=top)])
    expected = masked_fused_reference(reference, x, t, context, added, [pose, depth], [0, 1], [0.8, 0.5],
                                      [area(left, LATENT), area(top, LATENT)])
    ours = our_residuals(stack, x, t, context, y)
    union = torch.maximum(left, top)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b * area(union, b.shape[-1]), atol=2e-6, rtol=0)
    assert (ours[0][..., LATENT // 2:, LATENT // 2:] == 0).all(), "outside both masks nothing is added"


def test_uncond_rows_skipped_in_a_fused_pass(promax):
    """ControlNet is more important: the uncond rows are not computed, the cond rows form the batch
    the condition transformer sees (as diffusers' guess mode runs the cond half only)."""
    reference, model = promax
    x, t, context, y, added = inputs(11, batch=4)
    pose, depth = hint(70), hint(71)
    stack = ControlStack([ControlEntry(model.with_type("openpose"), as_image(pose), strength=0.8,
                                       mode="ControlNet is more important"),
                          ControlEntry(model.with_type("depth"), as_image(depth), strength=0.5,
                                       mode="ControlNet is more important")])
    added_total = stack.contributions(x, t, context, y, chunk_kinds=[0, 1])
    cond = slice(0, 2)
    expected = reference_residuals(reference, x[cond], t[cond], context[cond],
                                   {k: v[cond] for k, v in added.items()}, [pose, depth], [0, 1], [0.8, 0.5])
    soft = stack.entries[0].slot_weights
    ours = [added_total.skips[i] for i in range(4)] + [added_total.middle]
    for a, b, w in zip(ours, expected, soft):
        assert (a[2:] == 0).all()
        torch.testing.assert_close(a[:2], b * w, atol=1e-6, rtol=0)


def test_the_stack_hook_groups_entries_by_fusion_key_mode_and_range():
    """The hook is not Union-specific: a probe model whose entries share a key gets them together
    (strengths passed in, not applied by the stack), split by mode and range; values by hand."""
    from controlnet_core.protocol import Addition, ControlModel, HintSpec, Target

    calls = []

    class Probe(ControlModel):
        system = "Probe"

        def __init__(self, key):
            super().__init__()
            self.key, self.weight = key, torch.nn.Parameter(torch.ones(1))

        family, slots, soft_weights = "sd1", ("middle",), (0.5,)

        def hint_spec(self, h, w):
            return HintSpec(h * 8, w * 8, 3)

        def fusion_key(self):
            return self.key

        def additions(self, call, prepared, frames):
            calls.append(1)
            return [Addition(Target.middle(), 0, torch.ones_like(call.x[:, :1]))]

        def fused_additions(self, call, members):
            calls.append(len(members))
            total = sum(m.strength for m in members)
            return [Addition(Target.middle(), 0, torch.full_like(call.x[:, :1], total))]

    image = torch.rand(1, 16, 16, 3)
    stack = ControlStack([ControlEntry(Probe("a"), image, strength=0.25),
                          ControlEntry(Probe("a"), image, strength=0.5, end=0.5),
                          ControlEntry(Probe("a"), image, strength=2.0, mode="prompt is more important"),
                          ControlEntry(Probe(None), image, strength=3.0)])
    x = torch.zeros(1, 4, 2, 2)
    middle = stack.contributions(x, torch.tensor([1.0]), torch.zeros(1, 1, 8), percent=0.3).middle
    assert calls == [2, 1, 1]  # entries 1+2 fused (their strengths summed inside), 3 and 4 alone
    assert torch.equal(middle, torch.full_like(middle, 0.75 + 2.0 * 0.5 + 3.0))
    calls.clear()
    middle = stack.contributions(x, torch.tensor([1.0]), torch.zeros(1, 1, 8), percent=0.7).middle
    assert calls == [1, 1, 1]  # entry 2 is off: entry 1 runs alone, its strength applied by the stack
    assert torch.equal(middle, torch.full_like(middle, 0.25 + 2.0 * 0.5 + 3.0))
