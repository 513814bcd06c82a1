"""ControlNet-LLLite against kohya's formula, written out here with hand-set and random weights.

kohya's code (sd-scripts networks/control_net_lllite.py, ControlNet-LLLite-ComfyUI) cannot be
installed, so the reference is its forward written in this file with torch.nn.functional:

    cond  = conv chain (4×4/4, ReLU, then 2×2/2 | 4×4/4 | 4×4/4, ReLU, 2×2/2) of the hint in [-1, 1],
            flattened to B×(h·w)×E
    x'    = x + up(ReLU(mid(cat([cond, ReLU(down(x))], -1)))) · strength

applied to the input of attn1 to_q/to_k/to_v and attn2 to_q. The injection test puts that formula
as forward pre-hooks on the projections of a stock diffusers UNet2DConditionModel (tiny SDXL-like:
transformers at 1/2 and 1/4 of the latent, as SDXL's input blocks 4, 5, 7, 8 and middle), and
compares the UNet output with the pack's attention additions put at the same inputs.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from controlnet_core import CheckpointError, ControlEntry, ControlNetError, ControlStack, identify, load_control
from controlnet_core.protocol import UNetLayout, ldm_block_layout
from tests.diffusers_oracle import ldm_block_modules
from tests.factories import make_diffusers_unet, make_inputs, save_state_dict

PROJECTIONS = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_q")


def module_name(block: int | None, transformer: int, projection: str) -> str:
    where = "middle_block" if block is None else f"input_blocks_{block}"
    return f"lllite_unet_{where}_1_transformer_blocks_{transformer}_{projection}"


def module_tensors(name: str, depth: int, in_dim: int, emb: int, mlp: int, generator) -> dict[str, torch.Tensor]:
    """One module in the released key layout, random values (up is not zero: a trained module)."""
    half = emb // 2
    convs = {1: [(half, 3, 4), (emb, half, 2)], 2: [(half, 3, 4), (emb, half, 4)],
             3: [(half, 3, 4), (half, half, 4), (emb, half, 2)]}[depth]
    out = {}
    for index, (cout, cin, kernel) in enumerate(convs):
        out[f"{name}.conditioning1.{2 * index}.weight"] = torch.randn(cout, cin, kernel, kernel, generator=generator) / (
            cin * kernel * kernel) ** 0.5
        out[f"{name}.conditioning1.{2 * index}.bias"] = 0.1 * torch.randn(cout, generator=generator)
    for part, (cout, cin) in (("down", (mlp, in_dim)), ("mid", (mlp, mlp + emb)), ("up", (in_dim, mlp))):
        out[f"{name}.{part}.0.weight"] = torch.randn(cout, cin, generator=generator) / cin ** 0.5
        out[f"{name}.{part}.0.bias"] = 0.1 * torch.randn(cout, generator=generator)
    return out


# The tiny "sdxl" UNet of tests/factories: ldm input blocks 4, 5 (64 channels, 1/2, 1 transformer each),
# 7, 8 (96 channels, 1/4, 2 transformers each) and the middle block (96, 1/4, 2 transformers).
TINY_SDXL_BLOCKS = {4: (2, 64, 1), 5: (2, 64, 1), 7: (3, 96, 2), 8: (3, 96, 2), None: (3, 96, 2)}


def tiny_sdxl_lllite(emb: int = 8, mlp: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block, (depth, width, transformers) in TINY_SDXL_BLOCKS.items():
        for transformer in range(transformers):
            for projection in PROJECTIONS:
                state.update(module_tensors(module_name(block, transformer, projection), depth, width, emb, mlp,
                                            generator))
    return state


def tiny_sdxl_layout() -> UNetLayout:
    channels, downscale = ldm_block_layout(32, (1, 2, 3), (2, 2, 2))
    return UNetLayout(tuple(channels), tuple(downscale), 96, 2048, 2816, "sdxl", "the tiny SDXL UNet")


# ---- the formula, written out ------------------------------------------------------------------------

def reference_cond(state: dict, name: str, hint: torch.Tensor) -> torch.Tensor:
    """conditioning1 of kohya's module: the strided convs with ReLU between, flattened row-major."""
    h, index = hint * 2 - 1, 0
    while f"{name}.conditioning1.{index}.weight" in state:
        if index:
            h = F.relu(h)
        weight = state[f"{name}.conditioning1.{index}.weight"]
        h = F.conv2d(h, weight, state[f"{name}.conditioning1.{index}.bias"], stride=weight.shape[-1])
        index += 2
    return h.flatten(2).transpose(1, 2)


def reference_shift(state: dict, name: str, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    down = F.relu(F.linear(x, state[f"{name}.down.0.weight"], state[f"{name}.down.0.bias"]))
    mid = F.relu(F.linear(torch.cat([cond, down], -1), state[f"{name}.mid.0.weight"], state[f"{name}.mid.0.bias"]))
    return F.linear(mid, state[f"{name}.up.0.weight"], state[f"{name}.up.0.bias"])


def test_one_module_with_hand_set_weights_gives_the_formula():
    """E=2, M=2 on 2-wide tokens, weights chosen so every step can be followed by hand."""
    name = module_name(4, 0, "attn1_to_q")
    state = {
        f"{name}.conditioning1.0.weight": torch.zeros(1, 3, 4, 4), f"{name}.conditioning1.0.bias": torch.tensor([0.5]),
        f"{name}.conditioning1.2.weight": torch.ones(2, 1, 4, 4) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1) / 16,
        f"{name}.conditioning1.2.bias": torch.tensor([0.0, 1.0]),
        f"{name}.down.0.weight": torch.tensor([[1.0, 0.0], [0.0, -1.0]]), f"{name}.down.0.bias": torch.zeros(2),
        f"{name}.mid.0.weight": torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
        f"{name}.mid.0.bias": torch.zeros(2),
        f"{name}.up.0.weight": torch.tensor([[2.0, 0.0], [0.0, 3.0]]), f"{name}.up.0.bias": torch.tensor([0.0, 0.25]),
    }
    state[f"{name}.conditioning1.0.weight"][0, 0] = 1 / 16  # red channel average over the 4×4 patch
    model = load_control(state)
    assert model.system == "LLLite" and model.slots == ("input 4",)
    # The hint is 8× a 2×2 latent: one 16×16 patch per token at depth 2 (stride 4 · 4) → a 1×1 grid.
    hint = torch.zeros(1, 3, 16, 16)
    hint[0, 0] = 0.75                     # red 0.75 → 0.5 in [-1, 1]
    cond = model.prepare(hint * 2 - 1)[name]
    # conv 0: 0.5 + 0.5 = 1.0 everywhere (4×4), ReLU, conv 1: mean 1.0 → channel 0: 1.0, channel 1: -1 + 1 = 0
    assert torch.equal(cond, torch.tensor([[[1.0, 0.0]]]))
    tokens = torch.tensor([[[2.0, -3.0]]])
    # down: ReLU([2, 3]) = [2, 3]; mid: ReLU([1 + 2, 3]) = [3, 3]; up: [6, 9.25]
    shift = model.module(model.specs[0])(tokens, cond)
    assert torch.equal(shift, torch.tensor([[[6.0, 9.25]]]))
    assert torch.equal(shift, reference_shift(state, name, tokens, reference_cond(state, name, hint)))


def test_released_layout_is_identified_and_loaded(tmp_path):
    state = tiny_sdxl_lllite()
    path = save_state_dict(state, tmp_path / "kohya_controllllite_xl_canny.safetensors")
    identity = identify(path)
    assert (identity.system, identity.family, identity.runs_here) == ("LLLite", "sdxl", True)
    assert identity.variant == "32 attention modules"  # 8 transformer blocks × 4 projections
    model = load_control(path)
    assert model.slots == ("input 4", "input 5", "input 7", "input 8", "middle")
    assert {(s.where, s.depth, s.in_dim) for s in model.specs} == {
        ("input 4", 2, 64), ("input 5", 2, 64), ("input 7", 3, 96), ("input 8", 3, 96), ("middle", 3, 96)}
    model.check_fits(tiny_sdxl_layout())
    sd15 = UNetLayout.from_unet_config({"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                        "context_dim": 768})
    with pytest.raises(ControlNetError, match="reads 64 channels at 1/2 of the latent, input 4 has 640 at 1/2"):
        model.check_fits(sd15)


def test_modules_the_pack_cannot_place_are_refused_by_name():
    state = tiny_sdxl_lllite()
    generator = torch.Generator().manual_seed(1)
    state.update(module_tensors("lllite_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q", 3, 96, 8, 6,
                                generator))
    assert not identify(state).runs_here
    with pytest.raises(CheckpointError, match="output_blocks_2.*attn2 to_q of the input and middle"):
        load_control(state)


# ---- injection into a UNet ------------------------------------------------------------------------------

def projection_sites(unet):
    """(ldm block or None, transformer index, projection name, Linear) for every patched projection."""
    blocks = ldm_block_modules(unet)
    sites = []
    for block_index, module in enumerate(blocks):
        if hasattr(module, "transformer_blocks"):
            sites += [(block_index, t, b) for t, b in enumerate(module.transformer_blocks)]
    sites += [(None, t, b) for t, b in enumerate(unet.mid_block.attentions[0].transformer_blocks)]
    for block, transformer, basic in sites:
        for projection in PROJECTIONS:
            attention, linear = projection.split("_", 1)
            yield block, transformer, projection, getattr(getattr(basic, attention), linear)


def unet_with_shifts(unet, shift, inputs) -> torch.Tensor:
    """The UNet output with x → x + shift(block, transformer, projection, x) at each projection input."""
    handles = []
    for block, transformer, projection, linear in projection_sites(unet):
        def pre_hook(module, args, block=block, transformer=transformer, projection=projection):
            added = shift(block, transformer, projection, args[0])
            return None if added is None else (args[0] + added,) + args[1:]
        handles.append(linear.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            return unet(inputs.x, inputs.timesteps, inputs.context, added_cond_kwargs=inputs.added_cond_kwargs,
                        return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()


def ours(contribution):
    def shift(block, transformer, projection, x):
        unet_block = ("middle", 0) if block is None else ("input", block)
        return contribution.attention_addition((unet_block, transformer, projection.replace("_to_", ".to_")), x)
    return shift


def kohya(state, hint, strength=1.0, rows=None, mask=None):
    """kohya's formula at every module of the file; `rows` limits it to those batch rows, `mask`
    (B×1×h×w, latent size) multiplies it after area-resizing to the token grid."""
    def shift(block, transformer, projection, x):
        name = module_name(block, transformer, projection)
        if f"{name}.down.0.weight" not in state:
            return None
        cond = reference_cond(state, name, hint).expand(x.shape[0], -1, -1)
        out = reference_shift(state, name, x, cond) * strength
        if mask is not None:
            side = int(round((out.shape[1]) ** 0.5))
            out = out * F.interpolate(mask, size=(side, side), mode="area").flatten(2).transpose(1, 2)
        if rows is not None:
            out = out * rows.view(-1, 1, 1)
        return out
    return shift


@pytest.fixture(scope="module")
def unet_and_file():
    unet = make_diffusers_unet("sdxl", seed=3)
    state = tiny_sdxl_lllite(seed=4)
    return unet, state, load_control(state)


def test_unet_output_matches_the_formula_at_the_attention_inputs(unet_and_file):
    unet, state, model = unet_and_file
    inputs = make_inputs("sdxl", batch=2)
    hint = inputs.hint[:1]  # one control image for the cond and the uncond row, as the host batches them
    image = hint.permute(0, 2, 3, 1)
    stack = ControlStack([ControlEntry(model, image, strength=0.7)])
    contribution = stack.contributions(inputs.x, inputs.timesteps, inputs.context, inputs.y, chunk_kinds=[0, 1],
                                       layout=tiny_sdxl_layout())
    assert len(contribution.attention) == 32
    got = unet_with_shifts(unet, ours(contribution), inputs)
    expected = unet_with_shifts(unet, kohya(state, hint, 0.7), inputs)
    plain = unet_with_shifts(unet, lambda *args: None, inputs)
    assert torch.equal(got, expected)
    assert (got - plain).abs().max() > 1e-3  # the modules act


def test_strength_range_mode_and_mask_work_per_entry(unet_and_file):
    unet, state, model = unet_and_file
    inputs = make_inputs("sdxl", batch=2)
    hint = inputs.hint[:1]
    image = hint.permute(0, 2, 3, 1)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    mask[:, 2:6, 4:] = 0.5
    image_mask = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)  # at the control image's size
    entries = [ControlEntry(model, image, strength=0.5, mask=image_mask, mode="ControlNet is more important"),
               ControlEntry(model, image, strength=2.0, start=0.5, end=1.0)]
    stack = ControlStack(entries)

    def run(percent):
        contribution = stack.contributions(inputs.x, inputs.timesteps, inputs.context, inputs.y, percent=percent,
                                           chunk_kinds=[0, 1], layout=tiny_sdxl_layout())
        return unet_with_shifts(unet, ours(contribution), inputs)

    cond_only = torch.tensor([1.0, 0.0])
    first = kohya(state, hint, 0.5, rows=cond_only, mask=mask[None])
    second = kohya(state, hint, 2.0)
    both = unet_with_shifts(unet, lambda *a: _sum(first(*a), second(*a)), inputs)
    # Tolerance: only the controlled rows are computed (another GEMM shape) and strength, mask and row
    # scale multiply in another order than written here, which moves the last bits (measured 2e-6).
    assert torch.allclose(run(0.2), unet_with_shifts(unet, first, inputs), atol=1e-5, rtol=0)
    assert torch.allclose(run(0.7), both, atol=1e-5, rtol=0)  # two entries on one projection: summed
    assert not torch.allclose(run(0.2), run(0.7), atol=1e-3)


def _sum(a, b):
    return b if a is None else a if b is None else a + b


def test_odd_latent_sizes_resize_the_hint_to_each_grid(unet_and_file):
    """A 10×6 latent: the 1/4 grid is 3×2 (sides rounded up), which 80×48 // 32 cannot give; the hint
    is resized to 96×64 for those modules (nearest-exact), as Advanced-ControlNet does."""
    _, state, model = unet_and_file
    hint = torch.rand(1, 3, 80, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    prepared = model.prepare(hint)
    spec = next(s for s in model.specs if s.where == "input 7")
    resized = F.interpolate(hint, size=(96, 64), mode="nearest-exact")
    assert prepared[spec.name].shape[1] == 3 * 2
    assert torch.equal(prepared[spec.name], reference_cond(state, spec.name, (resized + 1) / 2))
    spec4 = next(s for s in model.specs if s.where == "input 4")
    assert torch.equal(prepared[spec4.name], reference_cond(state, spec4.name, (hint + 1) / 2))  # 5×3 grid fits


def test_tokens_from_another_architecture_are_refused(unet_and_file):
    _, _, model = unet_and_file
    call_frames = torch.zeros(1, dtype=torch.long)
    prepared = model.prepare(torch.zeros(1, 3, 64, 64))
    addition = model.additions(None, prepared, call_frames)[0]
    with pytest.raises(ControlNetError, match=re.escape("expects 16 tokens of width 64")):
        addition.value(torch.zeros(1, 16, 640))
