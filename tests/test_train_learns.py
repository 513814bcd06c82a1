"""Issue proof 4, in CI time: the control is learned.

A micro UNet (diffusers UNet2DConditionModel, 16/32 channels, 4×4 latents, no VAE) first learns the
unconditional task "a 2×2 square in one of the four corners" (controlnet_core.train.synthetic). Then
a ControlNet built from it by the paper's recipe trains with the real loop (frozen base, zero convs,
prompt dropout) while the control map marks which corner. Measured:

- the loss on a fixed evaluation batch (fixed noise and timesteps) falls below the base's own;
- DDIM samples drawn with the trained ControlNet overlap the control's square far better than
  samples of the base alone from the same noise (IoU of the positive region; by chance ≈ 0.25).

The learning rate is 3e-3, not the paper's 1e-5: the paper's rate is for an 860M-parameter model
over tens of thousands of steps, this is a 200k-parameter model over 150. bench/bench_train_task.py
runs the larger version (8×8 latents, random positions, more steps) and reports the numbers.
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core.train import NoiseSchedule, TextCondition, TrainableControlNet, TrainConfig, train
from controlnet_core.train.diffusers_base import DiffusersBase
from controlnet_core.train.synthetic import (ddim_sample, make_square_task, pretrain_base, square_dataset,
                                             square_overlap)

LATENT, SQUARE, STRIDE, CONTEXT = 4, 2, 2, 16
MICRO_UNET = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                  cross_attention_dim=CONTEXT, attention_head_dim=2, norm_num_groups=8)
MICRO_OVERRIDES = {"num_heads": 2, "norm_groups": 8}


def evaluation_loss(base, control, task, seed: int = 9) -> float:
    """Mean noise-prediction loss over a fixed batch: every example, timesteps spread over the schedule."""
    from controlnet_core.train import training_loss

    count = task.latents.shape[0]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(task.latents.shape, generator=generator)
    timesteps = torch.linspace(0, base.schedule.num_timesteps - 1, count).long()
    text = TextCondition(context=task.context[1:2].expand(count, -1, -1))
    with torch.no_grad():
        if control is None:
            x_t = base.schedule.add_noise(task.latents, noise, timesteps)
            prediction = base.predict(x_t, timesteps, text, None)
            return torch.nn.functional.mse_loss(prediction, base.schedule.target(task.latents, noise, timesteps)).item()
        return training_loss(control, base, task.latents, noise, timesteps, text, task.hints.float() / 255).item()


@pytest.mark.slow
def test_controlnet_learns_to_put_the_square_where_the_control_says():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    schedule = NoiseSchedule.stable_diffusion()
    task = make_square_task(256, LATENT, SQUARE, CONTEXT, stride=STRIDE, seed=0)
    unet = UNet2DConditionModel(sample_size=LATENT, **MICRO_UNET)
    pretrain_base(unet, task, schedule, steps=150, batch_size=16, learning_rate=3e-3)
    base = DiffusersBase(unet, "sd1", schedule)

    held_out = make_square_task(64, LATENT, SQUARE, CONTEXT, stride=STRIDE, seed=1)
    held_out.context = task.context
    text = TextCondition(context=task.context[1:2].expand(64, -1, -1))
    hints = held_out.hints.float() / 255
    without = square_overlap(ddim_sample(base, None, hints, text, (64, 4, LATENT, LATENT), steps=10, seed=5),
                             held_out.masks).mean().item()
    base_loss = evaluation_loss(base, None, held_out)

    control = TrainableControlNet.from_base(base, overrides=MICRO_OVERRIDES)
    assert evaluation_loss(base, control, held_out) == pytest.approx(base_loss, rel=1e-6)  # step 0: nothing added
    result = train(control, base, square_dataset(task),
                   TrainConfig(steps=150, learning_rate=3e-3, batch_size=16, prompt_dropout=0.5))
    trained_loss = evaluation_loss(base, control, held_out)
    with_control = square_overlap(ddim_sample(base, control, hints, text, (64, 4, LATENT, LATENT), steps=10, seed=5),
                                  held_out.masks).mean().item()

    report = (f"eval loss base {base_loss:.4f} -> with ControlNet {trained_loss:.4f}; "
              f"IoU without {without:.3f}, with {with_control:.3f}; training loss first/last 20 "
              f"{sum(result.losses[:20]) / 20:.4f}/{sum(result.losses[-20:]) / 20:.4f}")
    print(report)
    # Observed (seed 0): loss 0.79× the base's, IoU 0.26 -> 0.59. Other seeds of this setup gave IoU 0.52-0.80
    # against 0.29 without; the bounds leave room for another CPU's rounding taking another path.
    assert trained_loss < 0.9 * base_loss, report
    assert with_control > without + 0.15 and with_control > 0.4, report
