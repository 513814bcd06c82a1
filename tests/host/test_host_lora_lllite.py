"""Control-LoRA and ControlNet-LLLite inside a running ComfyUI server.

- Control-LoRA (a rank-8 SD1.5 file in Stability's layout): our LoadControlNet + ApplyControlNet and
  the host's ControlNetLoader + ControlNetApplyAdvanced (its ControlLora) give the same KSampler
  latent, on the plain model and on the model with a LoRA applied (LoraLoaderModelOnly): both
  build the ControlNet from the UNet weights the sampler loaded, LoRA included. The host loader's
  Control-LoRA wired into our ApplyControlNet runs through our core (a mask then acts).
- LLLite (an SD1.5-shaped file in kohya's layout; the released files are SDXL, beyond this CPU test's
  budget): the prompt runs and changes the latent, strength and mask act, and the next prompt
  without it gives the uncontrolled latent bit for bit: the attention patches are gone.
"""
from __future__ import annotations

import torch

import host_env
from test_host_server import LATENT_TOLERANCE, base_prompt, latent_of, relative_difference, with_host_controls, \
    with_our_apply

CONTROL_LORA = host_env.MODEL_FILES["control_lora"][1]
LLLITE = host_env.MODEL_FILES["lllite"][1]
LORA = host_env.MODEL_FILES["lora"][1]


def with_lora(prompt: dict) -> dict:
    prompt["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], "lora_name": LORA,
                                                                       "strength_model": 1.0}}
    prompt["sampler"]["inputs"]["model"] = ["lora", 0]
    return prompt


def test_control_lora_gives_the_hosts_latent_with_and_without_a_lora_on_the_model(server):
    latents = {}
    for lora in (False, True):
        prepare = with_lora if lora else (lambda prompt: prompt)
        host = latent_of(server, server.run_prompt(prepare(with_host_controls(
            base_prompt(steps=2), [(CONTROL_LORA, "depth_image", 0.8)]))))
        ours = latent_of(server, server.run_prompt(prepare(with_our_apply(
            base_prompt(steps=2), CONTROL_LORA, "depth_image", 0.8))))
        plain = latent_of(server, server.run_prompt(prepare(base_prompt(steps=2))))
        # A rank-8 random Control-LoRA moves this random model's latent by a few parts per thousand:
        # ten times the parity tolerance at least, so parity with the host proves something.
        assert relative_difference(ours, plain) > 10 * LATENT_TOLERANCE, "the Control-LoRA does not act"
        assert relative_difference(ours, host) <= LATENT_TOLERANCE, f"lora {lora}: {relative_difference(ours, host):.2e}"
        latents[lora] = ours
    assert relative_difference(latents[True], latents[False]) > 10 * LATENT_TOLERANCE
    assert "control could not be applied" not in server.log()


def test_the_hosts_control_lora_in_our_apply_node_runs_our_core(server):
    """The host's ControlNetLoader output (its ControlLora) wired into our ApplyControlNet is run by our
    core: the host's latent without a mask, and a mask (which the host's path has none of) acts: a
    zero mask gives the uncontrolled latent bit for bit."""
    def host_loaded(prompt: dict, **extra) -> dict:
        prompt = with_our_apply(prompt, CONTROL_LORA, "depth_image", 0.8, **extra)
        prompt["our_load"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROL_LORA}}
        return prompt

    host = latent_of(server, server.run_prompt(with_host_controls(base_prompt(steps=2),
                                                                  [(CONTROL_LORA, "depth_image", 0.8)])))
    ours = latent_of(server, server.run_prompt(host_loaded(base_prompt(steps=2))))
    plain = latent_of(server, server.run_prompt(base_prompt(steps=2)))
    assert relative_difference(ours, plain) > 10 * LATENT_TOLERANCE, "the Control-LoRA does not act"
    assert relative_difference(ours, host) <= LATENT_TOLERANCE, f"{relative_difference(ours, host):.2e}"
    masked_prompt = host_loaded(base_prompt(steps=2), mask=["no_mask", 0])
    masked_prompt["no_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 256, "height": 256}}
    assert torch.equal(latent_of(server, server.run_prompt(masked_prompt)), plain)


def test_lllite_runs_with_strength_and_mask_and_its_patches_leave_with_it(server):
    before = latent_of(server, server.run_prompt(base_prompt(steps=2)))
    full = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=2), LLLITE, "depth_image", 1.0)))
    half = latent_of(server, server.run_prompt(with_our_apply(base_prompt(steps=2), LLLITE, "depth_image", 0.5)))
    masked_prompt = with_our_apply(base_prompt(steps=2), LLLITE, "depth_image", 1.0, mask=["no_mask", 0])
    masked_prompt["no_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 256, "height": 256}}
    masked = latent_of(server, server.run_prompt(masked_prompt))
    after = latent_of(server, server.run_prompt(base_prompt(steps=2)))
    assert relative_difference(full, before) > 1e-3  # the modules act
    assert relative_difference(half, full) > 1e-3 and relative_difference(half, before) > 1e-3
    assert torch.equal(masked, before)  # a zero mask: every shift is multiplied by 0
    assert torch.equal(after, before)  # and the attention patches are gone for the next prompt


def test_attention_patches_shift_the_projection_inputs_in_the_hosts_transformer(comfy_path):
    """In-process: the host's own SpatialTransformer with our attn1/attn2 patches equals the same
    transformer with the shifts put on the inputs of its to_q / to_k / to_v layers (forward pre-hooks)."""
    import comfy.ops
    from comfy.ldm.modules.attention import SpatialTransformer

    pack = host_env.import_pack_in_process()
    protocol, units = pack.controlnet_core.protocol, pack.nodes.control_units
    generator = torch.Generator().manual_seed(0)
    block = SpatialTransformer(64, 2, 32, depth=2, context_dim=96, use_linear=True,
                               operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for parameter in block.parameters():  # disable_weight_init leaves them uninitialised
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    shifts = {(0, "attn1.to_k"): 0.3, (1, "attn1.to_q"): 0.5, (1, "attn1.to_v"): -0.2, (0, "attn2.to_q"): 0.7}
    matrices = {key: scale * torch.randn(64, 64, generator=generator) / 8 for key, scale in shifts.items()}
    contribution = protocol.Contribution()
    for (transformer, projection), matrix in matrices.items():
        contribution.add(protocol.Target.attention(4, transformer, projection), lambda t, m=matrix: t @ m)
    x = torch.randn(2, 64, 4, 4, generator=generator)
    context = torch.randn(2, 5, 96, generator=generator)
    with torch.no_grad():
        ours = block(x, context=context, transformer_options={"block": ("input", 4),
                                                              "patches": units.attention_patches(contribution)})
        handles = []
        for (transformer, projection), matrix in matrices.items():
            attention, linear = projection.split(".")
            layer = getattr(getattr(block.transformer_blocks[transformer], attention), linear)
            handles.append(layer.register_forward_pre_hook(lambda m, args, w=matrix: (args[0] + args[0] @ w,)))
        expected = block(x, context=context, transformer_options={"block": ("input", 4)})
        for handle in handles:
            handle.remove()
        plain = block(x, context=context, transformer_options={"block": ("input", 4)})
    assert torch.equal(ours, expected)
    assert (ours - plain).abs().max() > 1e-3
