"""Node layer for Control-LoRA and LLLite without a host (tests/comfy_stub.py).

- Control-LoRA: the control object builds the ControlNet at pre_run from the sampled model's
  `diffusion_model` weights as they are then (LoRAs applied), and drops it at cleanup; its residuals
  are diffusers' `ControlNetModel.from_unet(that UNet)` + up·down (tests/test_control_lora.py).
- LLLite: the contribution's attention functions become the host's attn1/attn2 patches, which
  shift to_q/to_k/to_v's inputs in self-attention and to_q's in cross-attention, at the block and
  transformer index the host names in extra_options (values derived by hand here).
"""
from __future__ import annotations

import copy
import importlib
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from tests.factories import make_inputs
from tests.test_control_lora import control_lora_and_oracle, ldm_base
from tests.test_controlnet_nodes import FakeModelSampling, conditioning, folder, nodes  # noqa: F401 (fixtures)

TINY_SD1_UNET_CONFIG = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": [2, 2, 2],
                        "context_dim": 768, "adm_in_channels": None}


class FakeUNet:
    """The host's diffusion_model as the ControlLora path reads it: ldm names, no prefix."""

    def __init__(self, unet):
        prefixed = ldm_base(unet)
        self.weights = {k[len("model.diffusion_model."):]: v for k, v in prefixed.items()}

    def state_dict(self):
        return dict(self.weights)


def sampled_model(unet):
    model_config = type("SD15", (), {"unet_config": TINY_SD1_UNET_CONFIG})()
    return SimpleNamespace(model_sampling=FakeModelSampling(), model_config=model_config, diffusion_model=FakeUNet(unet))


def test_control_lora_is_built_from_the_sampled_models_weights_each_run(nodes, folder):
    state, unet, build = control_lora_and_oracle("sd1", seed=5)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "control-lora.safetensors"))
    loaded = nodes.LoadControlNet().load("control-lora.safetensors")[0]
    assert loaded.source.system == "Control-LoRA"
    inputs = make_inputs("sd1", batch=2)
    image = inputs.hint[:1].permute(0, 2, 3, 1).contiguous()  # an IMAGE, 8× the latent: the hint is the image
    positive, _ = nodes.ApplyControlNet().apply(conditioning(), conditioning(), loaded, image, 1.0, 0.0, 1.0)
    control = positive[0][1]["control"]
    patched = copy.deepcopy(unet)  # the model with a LoRA applied: one encoder weight moved
    with torch.no_grad():
        patched.down_blocks[0].attentions[1].transformer_blocks[0].attn2.to_q.weight.mul_(0.5)
    sigma, results = 3.0, []
    for base in (unet, patched):
        model = sampled_model(base)
        control.pre_run(model, FakeModelSampling().percent_to_sigma)
        assert control.inference_memory_requirements(torch.float32) > 10_000  # the ControlNet built per run
        t = torch.full((2,), sigma)
        out = control.get_control(inputs.x, t, {"c_crossattn": inputs.context}, 2, {"cond_or_uncond": [0, 1]})
        control.cleanup()
        x_in = FakeModelSampling().calculate_input(t, inputs.x)
        with torch.no_grad():
            down, mid = build(base)(x_in, t * 50.0, inputs.context, inputs.hint[:1].expand(2, -1, -1, -1),
                                    return_dict=False)
        # Tolerance: the node path runs the stub host's layer classes on a channels-last hint (as the
        # host's IMAGE gives), which moves the last bits (measured 1e-6 relative); the LoRA moves 1e-2.
        for ours, reference in zip(out["output"] + out["middle"], list(down) + [mid]):
            assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()
        results.append(out["middle"][0])
        assert loaded.source.model._control is None  # dropped at cleanup
    assert (results[0] - results[1]).abs().max() > 1e-3 * results[1].abs().max()


def test_attention_functions_become_attn1_and_attn2_patches(nodes):
    protocol = importlib.import_module("pack_under_test.controlnet_core.protocol")
    units = importlib.import_module("pack_under_test.nodes.control_units")
    contribution = protocol.Contribution()
    add = protocol.Target.attention
    contribution.add(add(4, 1, "attn1.to_q"), lambda t: t * 2)
    contribution.add(add(4, 1, "attn1.to_k"), lambda t: t * 3)
    contribution.add(add(4, 1, "attn1.to_k"), lambda t: t * 0 + 1)   # two controls on one input: summed
    contribution.add(add(None, 0, "attn1.to_v"), lambda t: t * 5)
    contribution.add(add(4, 1, "attn2.to_q"), lambda t: t * 7)
    patches = units.attention_patches(contribution)
    attn1, = patches["attn1_patch"]
    attn2, = patches["attn2_patch"]
    n = torch.ones(2, 3, 4)
    q, k, v = attn1(n, n, n, {"block": ("input", 4), "block_index": 1})
    assert (q.unique().tolist(), k.unique().tolist(), v.unique().tolist()) == ([3.0], [5.0], [1.0])
    q, k, v = attn1(n, n, n, {"block": ("middle", 0), "block_index": 0})
    assert (q.unique().tolist(), k.unique().tolist(), v.unique().tolist()) == ([1.0], [1.0], [6.0])
    for other in ({"block": ("input", 4), "block_index": 0}, {"block": ("input", 5), "block_index": 1},
                  {"block": ("output", 4), "block_index": 1}, {}):
        assert all(out is n for out in attn1(n, n, n, other))
    context = torch.ones(2, 5, 8)
    q, k, v = attn2(n, context, context, {"block": ("input", 4), "block_index": 1})
    assert q.unique().tolist() == [8.0] and k is context and v is context
    assert units.attention_patches(protocol.Contribution()) == {}
