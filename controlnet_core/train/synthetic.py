"""A synthetic task that shows whether a control is learned (the issue's proof 4), without a VAE.

The "images" are latents directly: −1 everywhere except a square of +1 (all channels). The control
map is a white square on black at the same place, in pixels (8× the latent). A base UNet first
learns the unconditional task (a square somewhere: `pretrain_base`); then the ControlNet is
trained on top of the frozen base with the real loop, and samples drawn with and without it are
scored by how well their square overlaps the control's square (intersection over union of the
positive region). Used by tests/test_train_learns.py (tiny, CI time) and bench/bench_train_task.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cache import EncodedDataset, HintStore
from .interfaces import FrozenBase, TextCondition, TrainableControl
from .schedule import NoiseSchedule


@dataclass
class SquareTask:
    latents: torch.Tensor      # N×C×h×w in {−1, +1}
    hints: torch.Tensor        # N×3×8h×8w uint8
    masks: torch.Tensor        # N×h×w bool, the square
    context: torch.Tensor      # 2×tokens×D: row 0 the empty prompt, row 1 the caption


def make_square_task(count: int, latent_size: int, square: int, context_dim: int, *, stride: int = 1,
                     channels: int = 4, tokens: int = 4, seed: int = 0) -> SquareTask:
    """`count` examples; the square's corner lies on a grid of `stride` latent pixels."""
    generator = torch.Generator().manual_seed(seed)
    grid = (latent_size - square) // stride + 1
    positions = torch.randint(0, grid, (count, 2), generator=generator) * stride
    masks = torch.zeros(count, latent_size, latent_size, dtype=torch.bool)
    for index, (top, left) in enumerate(positions.tolist()):
        masks[index, top:top + square, left:left + square] = True
    latents = masks[:, None].float().expand(count, channels, latent_size, latent_size) * 2.0 - 1.0
    hints = (masks[:, None].repeat_interleave(8, 2).repeat_interleave(8, 3).expand(-1, 3, -1, -1) * 255).to(torch.uint8)
    context = torch.randn(2, tokens, context_dim, generator=generator)
    context[0] = 0.0
    return SquareTask(latents.contiguous(), hints.contiguous(), masks, context)


def square_dataset(task: SquareTask) -> EncodedDataset:
    """The task as a training set: exact latents (no VAE noise), every example captioned alike."""
    count = task.latents.shape[0]
    return EncodedDataset(latent_mean=task.latents, latent_std=None, caption_index=torch.ones(count, dtype=torch.long),
                          empty_index=0, context=task.context, y=None, hints=HintStore(tensor=task.hints))


def pretrain_base(unet: torch.nn.Module, task: SquareTask, schedule: NoiseSchedule, *, steps: int,
                  batch_size: int, learning_rate: float, seed: int = 0) -> list[float]:
    """Teach a diffusers UNet the unconditional task (a square anywhere), as the base model."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    unet.train()
    losses = []
    for _ in range(steps):
        indices = torch.randint(0, task.latents.shape[0], (batch_size,), generator=generator)
        x0 = task.latents[indices]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator)
        prediction = unet(schedule.add_noise(x0, noise, timesteps), timesteps,
                          encoder_hidden_states=task.context[1:2].expand(batch_size, -1, -1), return_dict=False)[0]
        loss = F.mse_loss(prediction, schedule.target(x0, noise, timesteps))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    unet.eval()
    return losses


@torch.no_grad()
def ddim_sample(base: FrozenBase, control: TrainableControl | None, hints: torch.Tensor, text: TextCondition,
                shape: tuple[int, ...], *, steps: int, seed: int) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from seeded noise; the control is applied at every step when given."""
    schedule = base.schedule
    noise_generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=noise_generator)
    times = torch.linspace(schedule.num_timesteps - 1, 0, steps).round().long()
    for index, t in enumerate(times):
        timesteps = t.repeat(shape[0])
        signal = control.signal(x, timesteps, text, hints) if control is not None else None
        prediction = base.predict(x, timesteps, text, signal)
        x0 = schedule.predict_x0(x, prediction, timesteps).clamp(-1.5, 1.5)
        eps = schedule.predict_noise(x, prediction, timesteps)
        if index + 1 < len(times):
            previous = times[index + 1].repeat(shape[0])
            x = schedule.add_noise(x0, eps, previous)
        else:
            x = x0
    return x


def square_overlap(samples: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per sample: IoU of the positive region (channel mean > 0) with the control's square."""
    positive = samples.mean(dim=1) > 0
    intersection = (positive & masks).flatten(1).sum(1).float()
    union = (positive | masks).flatten(1).sum(1).float()
    return intersection / union.clamp(min=1)
