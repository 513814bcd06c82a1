"""ControlNet as a TrainableControl: the paper's trainable encoder copy with zero convolutions."""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch.utils.checkpoint import checkpoint

from ._core import ControlNetModel, InputError, from_unet
from .interfaces import ControlSignal, FrozenBase, TextCondition, TrainableControl
from .output import save_safetensors


def checkpoint_module(module: torch.nn.Module) -> None:
    """Recompute `module` in backward (gradient checkpointing) without touching its class: the
    instance's forward is wrapped, parameter names stay the same. Only while training with grad."""
    original = module.forward

    def forward(*args, **kwargs):
        if torch.is_grad_enabled() and module.training:
            return checkpoint(original, *args, use_reentrant=False, **kwargs)
        return original(*args, **kwargs)

    module.forward = forward


class TrainableControlNet(TrainableControl):
    kind = "controlnet"

    def __init__(self, model: ControlNetModel) -> None:
        self.model = model.float().requires_grad_(True)
        self._checkpointing = False

    @classmethod
    def from_base(cls, base: FrozenBase, *, hint_channels: int = 3, overrides: Mapping[str, object] | None = None,
                  seed: int = 0) -> "TrainableControlNet":
        """The paper's initialisation: encoder copied from the base UNet, zero convs and the last
        hint conv at zero (controlnet_core.from_unet). The other hint convs get PyTorch's default
        random init, drawn from `seed` so a run is reproducible."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(from_unet(base.unet_state_dict(), hint_channels=hint_channels, overrides=overrides))

    @property
    def config(self):
        return self.model.config

    def attach(self, base: FrozenBase) -> None:
        if self.config.family != base.family:
            raise InputError(f"this ControlNet is {self.config.family} but the base model is {base.family}")
        self.to(base.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def signal(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
               hint: torch.Tensor) -> ControlSignal:
        residuals = self.model(x_t, hint, timesteps, text.context, text.y)
        return ControlSignal(down=list(residuals.down), mid=residuals.mid)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(state), strict=True)

    def describe(self) -> dict:
        return {"kind": self.kind, "config": self.config.to_dict()}

    def save(self, path: str | os.PathLike, dtype: torch.dtype, metadata: Mapping[str, str] | None = None) -> None:
        """Original layout, bare keys (`input_blocks.…`, `zero_convs.…`) like the released v1.1 files."""
        save_safetensors(self.model.state_dict(), path, dtype, metadata)

    def enable_gradient_checkpointing(self) -> None:
        if not self._checkpointing:
            for block in [*self.model.input_blocks, self.model.middle_block]:
                checkpoint_module(block)
            self._checkpointing = True
