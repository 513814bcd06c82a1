"""Training a ControlNet: the paper's claims about the initial state and one step, against diffusers.

Proof 1: a fresh ControlNet (from_unet) leaves the UNet's output bit-identical.
Proof 2: the zero convs output zero at step 0, yet their weight gradients are not zero, and after one
         optimizer step they are non-zero (while everything before them gets no gradient at step 0
         and does from step 1 on: the paper's argument that zero init does not stall learning).
Proof 3: the loss and every gradient of one step equal diffusers' ControlNet training computation
         (train_controlnet.py: DDPMScheduler.add_noise / get_velocity, ControlNetModel residuals into
         UNet2DConditionModel, MSE in float32) on the same batch, noise and timesteps.

The base UNet is diffusers' UNet2DConditionModel of the tiny configs (random weights) on both sides;
what is compared is our ControlNet, noise schedule and loss against diffusers'.
"""
from __future__ import annotations

import pytest
import torch

import controlnet_core
from controlnet_core.ldm.diffusers_keys import diffusers_to_ldm
from controlnet_core.train import (EncodedDataset, HintStore, NoiseSchedule, TextCondition, TrainableControlNet,
                                   TrainConfig, train, training_loss)
from controlnet_core.train.diffusers_base import DiffusersBase
from tests.factories import (diffusers_state_dict, make_diffusers_controlnet, make_diffusers_unet, make_inputs,
                             tiny_config)


def text_of(inputs) -> TextCondition:
    return TextCondition(context=inputs.context, y=inputs.y, unet_kwargs=dict(inputs.added_cond_kwargs or {}))


def base_for(name: str, prediction_type: str = "epsilon", seed: int = 1) -> DiffusersBase:
    return DiffusersBase(make_diffusers_unet(name, seed=seed), name if name != "sd2" else "sd2",
                         NoiseSchedule.stable_diffusion(prediction_type))


def fresh_control(base: DiffusersBase, name: str) -> TrainableControlNet:
    return TrainableControlNet.from_base(base, overrides=tiny_config(name).overrides)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_step0_fresh_controlnet_leaves_unet_output_bit_identical(name):
    base = base_for(name)
    control = fresh_control(base, name)
    inputs = make_inputs(name, seed=3)
    text = text_of(inputs)
    timesteps = inputs.timesteps.long()
    with torch.no_grad():
        alone = base.unet(inputs.x, timesteps, encoder_hidden_states=inputs.context,
                          added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)[0]
        signal = control.signal(inputs.x, timesteps, text, inputs.hint)
        steered = base.predict(inputs.x, timesteps, text, signal)
    assert len(signal.down) == tiny_config(name).num_down_residuals
    assert torch.equal(steered, alone)


def test_zero_convs_learn_from_step_one():
    name = "sd1"
    base = base_for(name)
    control = fresh_control(base, name)
    model = control.model
    inputs = make_inputs(name, seed=4)
    text = text_of(inputs)
    optimizer = torch.optim.AdamW(control.parameters(), lr=1e-3)
    zero_layers = [z[0] for z in model.zero_convs] + [model.middle_block_out[0]]
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(inputs.x.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (inputs.x.shape[0],), generator=generator)

    signal = control.signal(base.schedule.add_noise(inputs.x, noise, timesteps), timesteps, text, inputs.hint)
    assert all(torch.count_nonzero(r) == 0 for r in signal.down + [signal.mid]), "zero convs output zero at step 0"
    loss = training_loss(control, base, inputs.x, noise, timesteps, text, inputs.hint)
    loss.backward()
    for layer in zero_layers:
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    # Nothing upstream of the zero convs can get a gradient yet: the zero weights block it.
    assert torch.count_nonzero(model.input_blocks[1][0].in_layers[2].weight.grad) == 0
    assert torch.count_nonzero(model.input_hint_block[0].weight.grad) == 0

    optimizer.step()
    optimizer.zero_grad()
    for layer in zero_layers:
        assert torch.count_nonzero(layer.weight) > 0
    # Step 2: the gradient now reaches the copied encoder and the hint block.
    training_loss(control, base, inputs.x, noise, timesteps, text, inputs.hint).backward()
    assert model.input_blocks[1][0].in_layers[2].weight.grad.abs().sum() > 0
    assert model.input_hint_block[-1].weight.grad.abs().sum() > 0


def diffusers_training_loss(controlnet, unet, scheduler, latents, noise, timesteps, inputs) -> torch.Tensor:
    """diffusers' examples/controlnet/train_controlnet.py, one step's loss (its dtype casts included)."""
    import torch.nn.functional as F

    noisy = scheduler.add_noise(latents, noise, timesteps)
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=inputs.context, controlnet_cond=inputs.hint,
                           added_cond_kwargs=inputs.added_cond_kwargs, return_dict=False)
    prediction = unet(noisy, timesteps, encoder_hidden_states=inputs.context,
                      added_cond_kwargs=inputs.added_cond_kwargs,
                      down_block_additional_residuals=[s.to(torch.float32) for s in down],
                      mid_block_additional_residual=mid.to(torch.float32), return_dict=False)[0]
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


# Tolerances. The schedule's ᾱ is float64 here (as ldm and the host compute it) and float32 in
# diffusers' DDPMScheduler: ~1e-7 relative on the noisy latent, which reaches the loss and the
# gradients through the network; observed differences are ~1e-7 (loss) and ~1e-6 (gradients).
LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-4


@pytest.mark.parametrize("name,prediction_type", [("sd1", "epsilon"), ("sd1", "v_prediction"),
                                                  ("sdxl", "epsilon")])
def test_loss_and_gradients_match_diffusers_training_step(name, prediction_type):
    from diffusers import DDPMScheduler

    reference = make_diffusers_controlnet(name, seed=7).train()  # every weight random: no zero shortcut
    ours = TrainableControlNet(controlnet_core.load_controlnet(diffusers_state_dict(reference),
                                                               overrides=tiny_config(name).overrides))
    base = base_for(name, prediction_type, seed=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction_type)
    inputs = make_inputs(name, seed=9)
    generator = torch.Generator().manual_seed(10)
    noise = torch.randn(inputs.x.shape, generator=generator)
    timesteps = torch.tensor([17, 803])

    expected = diffusers_training_loss(reference, base.unet, scheduler, inputs.x, noise, timesteps, inputs)
    expected.backward()
    actual = training_loss(ours, base, inputs.x, noise, timesteps, text_of(inputs), inputs.hint)
    actual.backward()

    assert abs(actual.item() - expected.item()) <= LOSS_RTOL * expected.item(), (actual.item(), expected.item())
    reference_grads = diffusers_to_ldm({k: p.grad for k, p in reference.named_parameters()})
    our_grads = {k: p.grad for k, p in ours.model.named_parameters()}
    assert set(our_grads) == set(reference_grads)
    total_ours = torch.sqrt(sum((g.double() ** 2).sum() for g in our_grads.values()))
    total_reference = torch.sqrt(sum((g.double() ** 2).sum() for g in reference_grads.values()))
    assert total_reference > 0
    assert abs(total_ours - total_reference) <= GRAD_RTOL * total_reference
    for key, grad in reference_grads.items():
        scale = grad.norm().item()
        error = (our_grads[key] - grad).norm().item()
        assert error <= GRAD_RTOL * max(scale, 1e-3 * total_reference.item()), f"{key}: {error:.3g} vs norm {scale:.3g}"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_schedule_matches_diffusers_scheduler(prediction_type):
    from diffusers import DDPMScheduler

    ours = NoiseSchedule.stable_diffusion(prediction_type)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(14)
    x0, noise = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 1, 500, 999])
    # ᾱ is float64 here and float32 in DDPMScheduler (~1e-7 relative), and each side rounds its two
    # float32 products: a few 1e-6 absolute on unit-variance inputs (1.2e-6 seen with other draws).
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), scheduler.add_noise(x0, noise, timesteps),
                               rtol=1e-5, atol=4e-6)
    if prediction_type == "v_prediction":
        torch.testing.assert_close(ours.target(x0, noise, timesteps), scheduler.get_velocity(x0, noise, timesteps),
                                   rtol=1e-5, atol=4e-6)
    # The host keeps the schedule as sigmas = sqrt((1 - ᾱ) / ᾱ); going back gives the same ᾱ.
    sigmas = ((1 - scheduler.alphas_cumprod.double()) / scheduler.alphas_cumprod.double()).sqrt()
    torch.testing.assert_close(NoiseSchedule.from_sigmas(sigmas, prediction_type).alphas_cumprod,
                               scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0)


def random_dataset(name: str, count: int = 6, seed: int = 0) -> EncodedDataset:
    config = tiny_config(name)
    generator = torch.Generator().manual_seed(seed)
    size = config.latent_size
    return EncodedDataset(
        latent_mean=torch.randn(count, 4, size, size, generator=generator),
        latent_std=0.1 * torch.rand(count, 4, size, size, generator=generator),
        caption_index=torch.randint(1, 3, (count,), generator=generator), empty_index=0,
        context=torch.randn(3, config.context_tokens, config.context_dim, generator=generator), y=None,
        hints=HintStore(tensor=torch.randint(0, 256, (count, 3, size * 8, size * 8), generator=generator,
                                             dtype=torch.uint8)))


def test_resume_continues_exactly(tmp_path):
    """Two steps, a checkpoint, two more after resuming = four steps in one go (bit for bit)."""
    data = random_dataset("sd1")
    settings = dict(learning_rate=1e-3, batch_size=4, seed=3)

    def run(steps, work_dir, resume=False):
        base = base_for("sd1")
        control = fresh_control(base, "sd1")
        result = train(control, base, data, TrainConfig(steps=steps, **settings), work_dir=work_dir, resume=resume)
        return control, result

    straight, straight_result = run(4, None)
    run(2, tmp_path)
    resumed, resumed_result = run(4, tmp_path, resume=True)
    assert resumed_result.resumed_from == 2 and resumed_result.steps == 4
    assert resumed_result.losses == straight_result.losses
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".pt"] == ["checkpoint-0000004.pt"]


def test_resume_refuses_another_setup(tmp_path):
    data = random_dataset("sd1")
    base = base_for("sd1")
    train(fresh_control(base, "sd1"), base, data, TrainConfig(steps=1, batch_size=2), work_dir=tmp_path)
    with pytest.raises(controlnet_core.InputError, match="another model, dataset or batch size"):
        train(fresh_control(base, "sd1"), base, data, TrainConfig(steps=2, batch_size=3), work_dir=tmp_path,
              resume=True)
    with pytest.raises(controlnet_core.InputError, match="already holds checkpoints"):
        train(fresh_control(base, "sd1"), base, data, TrainConfig(steps=2, batch_size=2), work_dir=tmp_path)


def test_gradient_checkpointing_gives_the_same_gradients():
    name = "sd1"
    base = base_for(name)
    inputs = make_inputs(name, seed=12)
    reference = make_diffusers_controlnet(name, seed=13)
    plain = TrainableControlNet(controlnet_core.load_controlnet(diffusers_state_dict(reference),
                                                                overrides=tiny_config(name).overrides))
    checkpointed = TrainableControlNet(controlnet_core.load_controlnet(diffusers_state_dict(reference),
                                                                       overrides=tiny_config(name).overrides))
    checkpointed.enable_gradient_checkpointing()
    noise, timesteps = torch.randn(inputs.x.shape), torch.tensor([100, 900])
    for control in (plain, checkpointed):
        control.train(True)
        training_loss(control, base, inputs.x, noise, timesteps, text_of(inputs), inputs.hint).backward()
    for (key, a), b in zip(plain.model.named_parameters(), checkpointed.model.parameters()):
        assert torch.equal(a.grad, b.grad), key


def test_prompt_dropout_replaces_captions_with_the_empty_prompt():
    data = random_dataset("sd1", count=4)
    generator = torch.Generator().manual_seed(0)
    dropped = torch.tensor([True, False, True, False])
    _, _, text = data.batch(torch.arange(4), dropped, generator, torch.device("cpu"))
    for row in range(4):
        expected = data.context[0] if dropped[row] else data.context[data.caption_index[row]]
        assert torch.equal(text.context[row], expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_checkpointing_run(precision):
    """The GPU settings (autocast, loss scaling for fp16, gradient checkpointing) exercised on the CPU,
    where autocast also exists: no GPU is available to these tests."""
    data = random_dataset("sd1", count=2)
    base = base_for("sd1")
    control = fresh_control(base, "sd1")
    result = train(control, base, data, TrainConfig(steps=2, batch_size=2, learning_rate=1e-3, mixed_precision=precision,
                                                    gradient_checkpointing="on"))
    assert result.precision == precision and result.gradient_checkpointing
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(p.dtype == torch.float32 for p in control.parameters())  # full-precision master weights
    assert torch.count_nonzero(control.model.zero_convs[0][0].weight) > 0
