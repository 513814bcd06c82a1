"""The training loop, as the ControlNet paper describes it.

- Only the control trains; the base UNet is frozen (`unlock_decoder` also trains the UNet decoder:
  the paper's `sd_locked=False`).
- The ControlNet starts from the base UNet's encoder with zero convs (see TrainableControlNet); a
  ControlNeXt trains its module and a UNet subset in optimizer groups of their own
  (TrainableControlNeXt.parameter_groups).
- Prompt dropout: each caption is replaced by the empty prompt with probability 0.5, so the
  ControlNet learns to read the control map without the text.
- Noise-prediction loss with the base model's own schedule and prediction type (ε or v):
  t ~ U{0, …, T−1}, x_t = sqrt(ᾱ_t)·x_0 + sqrt(1−ᾱ_t)·ε, loss = mean((model(x_t) − target)²).
- AdamW at the paper's learning rate, 1e-5 (torch defaults otherwise, as the paper's code).
- Mixed precision (bf16, else fp16 with loss scaling) and gradient checkpointing on GPUs.
- Checkpoints (trainable state, optimizer, random state, data order, losses) and exact resume.

All randomness (data order, prompt dropout, latent sampling, noise, timesteps) comes from one
seeded CPU generator, so a run is reproducible and a resumed run continues the same sequence.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ._core import InputError
from .cache import EncodedDataset
from .interfaces import FrozenBase, TextCondition, TrainableControl

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
GRADIENT_CHECKPOINTING = ("auto", "on", "off")
CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


@dataclass
class TrainConfig:
    steps: int = 1000
    learning_rate: float = 1e-5
    batch_size: int = 4
    prompt_dropout: float = 0.5
    weight_decay: float = 1e-2          # torch.optim.AdamW's default, which the paper's code keeps
    unlock_decoder: bool = False
    mixed_precision: str = "auto"       # auto: bf16 (else fp16) on CUDA, none on CPU
    gradient_checkpointing: str = "auto"  # auto: on for CUDA, off on CPU
    seed: int = 0
    checkpoint_every: int = 0           # steps between checkpoints (0: only at the end, when a work dir is given)
    keep_checkpoints: int = 1

    def validate(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be at least 1, found {self.steps}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(f"learning rate must be positive, found {self.learning_rate}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, found {self.batch_size}")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            problems.append(f"prompt dropout must be in [0, 1], found {self.prompt_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed precision must be one of {MIXED_PRECISION}, found {self.mixed_precision!r}")
        if self.gradient_checkpointing not in GRADIENT_CHECKPOINTING:
            problems.append(f"gradient checkpointing must be one of {GRADIENT_CHECKPOINTING}, "
                            f"found {self.gradient_checkpointing!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            problems.append("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        if problems:
            raise InputError("training settings: " + "; ".join(problems))


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    resumed_from: int | None = None
    precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoints: list[Path] = field(default_factory=list)


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def training_loss(control: TrainableControl, base: FrozenBase, x0: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor, text: TextCondition, hint: torch.Tensor,
                  precision: str = "no") -> torch.Tensor:
    """One batch's loss: the noise-prediction MSE of the base UNet steered by the control."""
    x_t = base.schedule.add_noise(x0, noise, timesteps)
    target = base.schedule.target(x0, noise, timesteps)
    timesteps = timesteps.to(x0.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.autocast(x0.device.type, dtype=dtype, enabled=dtype is not None):
        signal = control.signal(x_t, timesteps, text, hint)
        prediction = base.predict(x_t, timesteps, text, signal)
    return F.mse_loss(prediction.float(), target.float())


class DataOrder:
    """Epochs of shuffled indices, drawn batch by batch (state saved in checkpoints)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.generator = size, generator
        self.permutation = torch.randperm(size, generator=generator)
        self.position = 0

    def next(self, count: int) -> torch.Tensor:
        taken = []
        while count > 0:
            if self.position == self.size:
                self.permutation = torch.randperm(self.size, generator=self.generator)
                self.position = 0
            piece = self.permutation[self.position:self.position + count]
            taken.append(piece)
            self.position += len(piece)
            count -= len(piece)
        return torch.cat(taken)


def checkpoints_in(work_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a work dir, oldest first."""
    folder = Path(work_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _save_checkpoint(path: Path, state: dict) -> None:
    from .output import atomic_path

    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def train(control: TrainableControl, base: FrozenBase, data: EncodedDataset, config: TrainConfig, *,
          work_dir: str | os.PathLike | None = None, resume: bool = False, data_signature: str = "",
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train `control` on `data` against the frozen `base`. progress(step, total, loss) after each
    step (it may raise to stop: the last checkpoint stays, nothing else is written)."""
    config.validate()
    device = base.device
    control.attach(base)
    decoder = base.decoder_parameters() if config.unlock_decoder else []
    precision = resolve_precision(config.mixed_precision, device)
    checkpointing = config.gradient_checkpointing == "on" or (
        config.gradient_checkpointing == "auto" and device.type == "cuda")
    if checkpointing:
        control.enable_gradient_checkpointing()
        base.enable_gradient_checkpointing()

    groups = control.parameter_groups(config.learning_rate) + ([{"params": decoder}] if decoder else [])
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    generator = torch.Generator().manual_seed(config.seed)
    order = DataOrder(len(data), generator)
    losses: list[float] = []
    start = 0
    identity = {"control": control.describe(), "data": data_signature, "unlock_decoder": config.unlock_decoder,
                "batch_size": config.batch_size}

    work_path = Path(work_dir) if work_dir is not None else None
    existing = checkpoints_in(work_path) if work_path is not None else []
    if resume and existing:
        state = torch.load(existing[-1], map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
            raise InputError(f"checkpoint {existing[-1]} was made for another model, dataset or batch size and "
                             "cannot be resumed here; start without resume or use another work folder")
        control.load_state_dict(state["control"])
        with torch.no_grad():
            for parameter, saved in zip(decoder, state["decoder"]):
                parameter.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["rng"])
        order.permutation, order.position = state["order"], state["position"]
        losses, start = list(state["losses"]), int(state["step"])
    elif existing and not resume:
        raise InputError(f"work folder {work_path} already holds checkpoints ({existing[-1].name}); resume from "
                         "them or choose another work folder")

    result = TrainResult(losses=losses, steps=start, resumed_from=start if resume and existing else None,
                         precision=precision, gradient_checkpointing=checkpointing)

    def checkpoint(step: int) -> None:
        work_path.mkdir(parents=True, exist_ok=True)
        path = work_path / f"checkpoint-{step:07d}.pt"
        _save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "identity": identity, "step": step,
            "control": {k: v.detach().cpu() for k, v in control.state_dict().items()},
            "decoder": [p.detach().cpu() for p in decoder],
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
            "rng": generator.get_state(), "order": order.permutation, "position": order.position,
            "losses": list(losses), "config": dataclasses.asdict(config)})
        result.checkpoints.append(path)
        for old in checkpoints_in(work_path)[:-config.keep_checkpoints]:
            old.unlink(missing_ok=True)

    control.train(True)
    schedule = base.schedule
    for step in range(start, config.steps):
        indices = order.next(config.batch_size)
        dropped = torch.rand(len(indices), generator=generator) < config.prompt_dropout
        x0, hint, text = data.batch(indices, dropped, generator, device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, schedule.num_timesteps, (len(indices),), generator=generator)
        loss = training_loss(control, base, x0, noise, timesteps, text, hint, precision)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step + 1}: the loss is {loss.item()}; "
                                     "lower the learning rate")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        result.steps = step + 1
        if progress is not None:
            progress(step + 1, config.steps, losses[-1])
        if work_path is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 \
                and step + 1 < config.steps:
            checkpoint(step + 1)
    if work_path is not None and result.steps > start:
        checkpoint(result.steps)
    control.train(False)
    return result
