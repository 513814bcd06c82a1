"""The two seams of the training loop: the frozen base model and the trainable control.

The loop (loop.py) only ever does this per step:

    signal = control.signal(x_t, timesteps, text, hint)        # trainable
    prediction = base.predict(x_t, timesteps, text, signal)    # frozen UNet, control injected
    loss = mse(prediction, schedule.target(x0, noise, timesteps))

so a new control system plugs in by implementing `TrainableControl`, and a new host for the UNet
by implementing `FrozenBase`:

- ControlNet (controlnet.py): a trainable copy of the UNet encoder; its signal is `down` residuals
  for the skip connections and a `mid` residual.
- ControlNeXt (trainable_controlnext.py): a small module plus a trainable subset of UNet weights,
  whose cross-normalised feature is added into the UNet stream. Its `attach(base)` unfreezes that
  subset through `base.named_unet_parameters()` and returns those parameters as its own (with their
  own learning rate: `parameter_groups`); its signal is `stream`: the core's stream additions, which
  a FrozenBase's `predict` evaluates where the UNet reaches their point; its `save` writes the
  module and the subset's weight increments.

Bases: DiffusersBase (diffusers' UNet2DConditionModel from a single-file checkpoint; the command
line) and the ComfyUI host's own UNet (nodes/train_nodes.py).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .schedule import NoiseSchedule


@dataclass
class TextCondition:
    """The text side of a batch, in the forms the models take.

    context: B×tokens×context_dim. y: B×adm_channels (SDXL's pooled text + size embedding, as the
    ldm UNet and the ControlNet take it), else None. unet_kwargs: extra keyword arguments in the
    form a particular base wants (diffusers: {"added_cond_kwargs": {"text_embeds", "time_ids"}})."""
    context: torch.Tensor
    y: torch.Tensor | None = None
    unet_kwargs: dict = field(default_factory=dict)


@dataclass
class ControlSignal:
    """What a trainable control hands the UNet for one forward. Fields a base does not know must
    make it raise (see FrozenBase.check_signal), never be ignored.

    down: one residual per UNet skip connection, encoder order (ControlNet).
    mid: residual added after the middle block (ControlNet).
    stream: functions of the hidden state added to the UNet's stream at a point in ldm numbering
    (ControlNeXt), as the core's `Addition`s with a stream `Target` (the skip stored there is
    not changed)."""
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    stream: list | None = None

    def fields(self) -> set[str]:
        return {name for name, value in vars(self).items() if value is not None}


class FrozenBase(ABC):
    """The base diffusion UNet, frozen, with its noise schedule."""

    family: str                 # "sd1", "sd2" or "sdxl"
    schedule: NoiseSchedule
    device: torch.device
    supported_signal_fields: frozenset[str] = frozenset({"down", "mid"})

    @abstractmethod
    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
                signal: ControlSignal | None) -> torch.Tensor:
        """The UNet's output (ε or v) for x_t at integer `timesteps`, with the control injected."""

    @abstractmethod
    def unet_state_dict(self) -> Mapping[str, torch.Tensor]:
        """The UNet's weights in a layout controlnet_core.from_unet reads (ldm or diffusers names)."""

    @abstractmethod
    def named_unet_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The UNet's parameters, for controls that train part of it (names in the base's own layout)."""

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        """The UNet decoder (output blocks and output head): the paper's unlocked-decoder option."""
        raise NotImplementedError(f"{type(self).__name__} cannot unlock the UNet decoder")

    def save_unet(self, path: str | os.PathLike, dtype: torch.dtype) -> None:
        """Write the (partly trained) UNet in the original layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its UNet")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward instead of storing them (less memory, ~30% slower)."""

    def check_signal(self, signal: ControlSignal | None) -> None:
        unknown = signal.fields() - self.supported_signal_fields if signal is not None else set()
        if unknown:
            raise NotImplementedError(f"{type(self).__name__} cannot inject {sorted(unknown)} into its UNet")


class TrainableControl(ABC):
    """A control system being trained: its parameters, its signal, its checkpoint state and its file."""

    kind: str  # "controlnet", "controlnext"

    @abstractmethod
    def attach(self, base: FrozenBase) -> None:
        """Called once before training, with the base it will steer (check family, unfreeze a UNet subset...)."""

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """Everything the optimizer updates (including any UNet weights this control trains)."""

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """The optimizer's parameter groups at the run's learning rate (default: one group)."""
        return [{"params": self.parameters()}]

    @abstractmethod
    def signal(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
               hint: torch.Tensor) -> ControlSignal:
        """hint: B×C×8h×8w control maps in [0, 1]."""

    @abstractmethod
    def train(self, mode: bool = True) -> None: ...

    @abstractmethod
    def to(self, device: torch.device) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable state for checkpoints (full precision)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able identity (kind, family, hint channels...): a resumed checkpoint must match it."""

    @abstractmethod
    def save(self, path: str | os.PathLike, dtype: torch.dtype, metadata: Mapping[str, str] | None = None) -> None:
        """Write the release file (atomically: a failure leaves nothing at `path`)."""

    def enable_gradient_checkpointing(self) -> None:
        """Optional memory saving; default: none."""
