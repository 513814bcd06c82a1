"""Training ControlNeXt with the loop, against the released training step (dvlab-research/ControlNeXt,
ControlNeXt-SD1.5-Training / ControlNeXt-SDXL-Training train_controlnext.py).

The reference side is independent of the pack: the released module rebuilt from diffusers' own
blocks (ReferenceModuleA, tests/test_controlnext.py), the released injection written out as hooks on
a stock diffusers UNet2DConditionModel, diffusers' DDPMScheduler for the noise, and the released
optimizer set-up (module at 10× the learning rate, the UNet's `to_out` weights at 1×; SDXL: only the
cross-attention ones).

1. One step's loss and every gradient equal the released training step's.
2. The module and the UNet subset learn, and that subset is the only part of the base that changes.
3. The saved files load in the pack's loader (module + UNet increments), and the pack's inference
   with them reproduces the trained model's prediction.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import controlnet_core
from controlnet_core import ControlEntry, ControlStack, InputError
from controlnet_core.train import NoiseSchedule, TrainableControlNeXt, TrainConfig, train, training_loss
from controlnet_core.train.diffusers_base import DiffusersBase
from controlnet_core.train.trainable_controlnext import unet_weights_path
from tests.diffusers_oracle import unet_with_contribution
from tests.factories import make_diffusers_unet, make_inputs
from tests.test_controlnext import ReferenceModuleA, _ldm_to_diffusers_to_out, reference_cross_norm
from tests.test_t2i_adapter import layout_of
from tests.test_train_core import random_dataset, text_of

SCALE = 0.35  # the released SD1.5 example's controlnext_scale (the default is 1.0)


def released_training_loss(variant, module, unet, scheduler, latents, noise, timesteps, inputs, hint, scale):
    """One step of the released train_controlnext.py: module(image, t), its output added where the
    released UNet adds it (SD1.5: after down block 0, pool then cross-norm; SDXL: after conv_in,
    cross-norm then pool), MSE against the noise in float32."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    controls = module(hint, timesteps)

    def sd15(_, __, output):
        sample, res_samples = output
        c = F.adaptive_avg_pool2d(controls["out"], sample.shape[-2:]).to(sample)
        return sample + reference_cross_norm(c, sample) * scale, res_samples

    def sdxl(_, args, kwargs):
        sample = kwargs["hidden_states"]
        c = F.adaptive_avg_pool2d(reference_cross_norm(controls["out"].to(sample), sample), sample.shape[-2:])
        return args, {**kwargs, "hidden_states": sample + c * scale}

    handle = (unet.down_blocks[0].register_forward_hook(sd15) if variant == "sd1" else
              unet.down_blocks[0].register_forward_pre_hook(sdxl, with_kwargs=True))
    try:
        prediction = unet(noisy, timesteps, encoder_hidden_states=inputs.context,
                          added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)[0]
    finally:
        handle.remove()
    return F.mse_loss(prediction.float(), noise.float(), reduction="mean")


def released_trainable_unet_names(unet, family: str) -> list[str]:
    """SD1.5: `if "to_out" in name`; SDXL: re.match(r".*attn2.*to_out.*", name) (written out)."""
    names = [name for name, _ in unet.named_parameters() if "to_out" in name]
    return names if family == "sd1" else [name for name in names if ".attn2." in name]


# The noisy latent differs by ~1e-7 relative (ᾱ in float64 here, float32 in DDPMScheduler; see
# tests/test_train_core.py), which reaches the loss and gradients through the network.
LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-4


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_one_step_matches_the_released_training_step(family):
    from diffusers import DDPMScheduler

    base = DiffusersBase(make_diffusers_unet(family, seed=8), family, NoiseSchedule.stable_diffusion())
    ours = TrainableControlNeXt.from_base(base, scale=SCALE, seed=3)
    ours.attach(base)
    reference_unet = make_diffusers_unet(family, seed=8).requires_grad_(False)
    trainable = released_trainable_unet_names(reference_unet, family)
    for name, parameter in reference_unet.named_parameters():
        parameter.requires_grad_(name in trainable)
    reference = ReferenceModuleA(32, scale=SCALE)
    reference.load_state_dict(ours.model.state_dict())
    assert sorted(ours.unet_parameters) == sorted(trainable)

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    inputs = make_inputs(family, seed=9)
    noise = torch.randn(inputs.x.shape, generator=torch.Generator().manual_seed(10))
    timesteps = torch.tensor([17, 803])
    expected = released_training_loss(family, reference, reference_unet, scheduler, inputs.x, noise, timesteps,
                                      inputs, inputs.hint, SCALE)
    expected.backward()
    actual = training_loss(ours, base, inputs.x, noise, timesteps, text_of(inputs), inputs.hint)
    actual.backward()

    assert abs(actual.item() - expected.item()) <= LOSS_RTOL * expected.item(), (actual.item(), expected.item())
    reference_grads = {f"module.{k}": p.grad for k, p in reference.named_parameters()}
    reference_grads.update({f"unet.{k}": p.grad for k, p in reference_unet.named_parameters() if p.requires_grad})
    our_grads = {f"module.{k}": p.grad for k, p in ours.model.named_parameters()}
    our_grads.update({f"unet.{k}": p.grad for k, p in ours.unet_parameters.items()})
    assert set(our_grads) == set(reference_grads)
    total = math.sqrt(sum((g.double() ** 2).sum().item() for g in reference_grads.values()))
    assert total > 0
    for key, grad in reference_grads.items():
        error = (our_grads[key] - grad).norm().item()
        assert error <= GRAD_RTOL * max(grad.norm().item(), 1e-3 * total), f"{key}: {error:.3g} vs {grad.norm():.3g}"
    # The released optimizer: AdamW, the module at 10× the learning rate, the UNet subset at 1×.
    groups = ours.parameter_groups(1e-5)
    assert [g["lr"] for g in groups] == [1e-4, 1e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == \
        sum(p.numel() for p in reference.parameters()) + sum(p.numel() for n, p in reference_unet.named_parameters()
                                                             if n in trainable)


def test_only_the_unet_subset_of_the_base_changes():
    base = DiffusersBase(make_diffusers_unet("sd1", seed=2), "sd1", NoiseSchedule.stable_diffusion())
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    control = TrainableControlNeXt.from_base(base, seed=1)
    module_before = {k: v.clone() for k, v in control.model.state_dict().items()}
    result = train(control, base, random_dataset("sd1", count=4), TrainConfig(steps=2, learning_rate=1e-4,
                                                                              batch_size=2))
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    after = base.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if "to_out" in k}  # every to_out weight and bias, nothing else
    assert all(not torch.equal(module_before[k], v) for k, v in control.model.state_dict().items())
    assert all(not p.requires_grad for name, p in base.unet.named_parameters() if "to_out" not in name)


def test_module_and_subset_fit_a_batch():
    """Ten optimizer steps (the released groups) on one fixed batch, noise and timesteps: the loss
    falls steadily (observed 1.376 -> 0.999). The loop's learning on a real task: bench_train_task.py."""
    base = DiffusersBase(make_diffusers_unet("sd1", seed=2), "sd1", NoiseSchedule.stable_diffusion())
    control = TrainableControlNeXt.from_base(base, seed=1)
    control.attach(base)
    optimizer = torch.optim.AdamW(control.parameter_groups(1e-3), lr=1e-3)
    inputs = make_inputs("sd1", seed=6)
    noise = torch.randn(inputs.x.shape, generator=torch.Generator().manual_seed(7))
    losses = []
    for _ in range(10):
        loss = training_loss(control, base, inputs.x, noise, torch.tensor([300, 600]), text_of(inputs), inputs.hint)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < min(losses[:-1]), losses


def test_saved_files_load_in_the_pack_and_reproduce_the_trained_model(tmp_path):
    unet = make_diffusers_unet("sd1", seed=2)
    pretrained = {k: v.clone() for k, v in unet.state_dict().items()}
    base = DiffusersBase(unet, "sd1", NoiseSchedule.stable_diffusion())
    control = TrainableControlNeXt.from_base(base, scale=SCALE, seed=1)
    train(control, base, random_dataset("sd1", count=4), TrainConfig(steps=2, learning_rate=1e-3, batch_size=2))
    output = tmp_path / "controlnext.safetensors"
    control.save(output, torch.float32, {"format": "pt"})
    companion = unet_weights_path(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([output.name, companion.name])

    identity = controlnet_core.identify(output)
    assert identity.system == "ControlNeXt" and controlnet_core.identify(companion).variant == "UNet weight subset"
    loaded = controlnet_core.load_controlnext(output, unet_weights=companion)
    assert loaded.config.variant == "sd15"  # decided by the UNet weights (an SD1.5 subset)
    patches = loaded.unet_weight_patches()
    assert {how for how, _ in patches.values()} == {"diff"}  # increments, by the file name
    assert {_ldm_to_diffusers_to_out(k) for k in patches} == {k for k in pretrained if "to_out" in k}

    # The pack's inference: the pretrained UNet with the patches, the module at strength = scale.
    patched = make_diffusers_unet("sd1", seed=2)
    patched.load_state_dict(pretrained)
    with torch.no_grad():
        for key, (_, delta) in patches.items():
            patched.state_dict()[_ldm_to_diffusers_to_out(key)].add_(delta)
    inputs = make_inputs("sd1", seed=4)
    timesteps = inputs.timesteps.long()
    stack = ControlStack([ControlEntry(loaded, inputs.hint[:1].movedim(1, -1), strength=SCALE)])
    contribution = stack.contributions(inputs.x, timesteps, inputs.context, None, layout=layout_of("sd1"))
    got = unet_with_contribution(patched, contribution, inputs.x, timesteps, inputs.context, None)
    with torch.no_grad():
        hint = inputs.hint[:1].expand(2, -1, -1, -1)
        trained = base.predict(inputs.x, timesteps, text_of(inputs), control.signal(inputs.x, timesteps,
                                                                                    text_of(inputs), hint))
    # Float32 files: the module's weights are the trained ones exactly; the UNet's are pretrained +
    # (trained − pretrained), which rounds once in float32 (a few ulp of each weight).
    torch.testing.assert_close(got, trained, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, unet_with_contribution(patched, None, inputs.x, timesteps, inputs.context, None))


def test_refused_bases_and_resume(tmp_path):
    sd2 = DiffusersBase(make_diffusers_unet("sd2", seed=2), "sd2", NoiseSchedule.stable_diffusion())
    with pytest.raises(InputError, match="SD1.5 and SDXL"):
        TrainableControlNeXt.from_base(sd2)
    data = random_dataset("sd1", count=4)

    def run(steps, resume=False):
        base = DiffusersBase(make_diffusers_unet("sd1", seed=2), "sd1", NoiseSchedule.stable_diffusion())
        control = TrainableControlNeXt.from_base(base, seed=1)
        result = train(control, base, data, TrainConfig(steps=steps, learning_rate=1e-4, batch_size=2),
                       work_dir=tmp_path / ("resumed" if resume or steps == 1 else "straight"), resume=resume)
        return control, result

    straight, straight_result = run(2)
    run(1)
    resumed, resumed_result = run(2, resume=True)
    assert resumed_result.resumed_from == 1 and resumed_result.losses == straight_result.losses
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
