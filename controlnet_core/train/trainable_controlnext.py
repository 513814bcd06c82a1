"""ControlNeXt as a TrainableControl, as its released training scripts train it.

dvlab-research/ControlNeXt (ControlNeXt-SD1.5-Training and ControlNeXt-SDXL-Training,
train_controlnext.py):

- the module (controlnet_core.controlnext, "module A": ~3.5M parameters) starts from PyTorch's
  default initialisation: no zero convolutions. Cross-normalisation gives its feature the mean and
  standard deviation of the UNet's hidden state where it is added, which is what the paper offers
  instead of zero init (so, unlike a ControlNet, the first step already changes the UNet's output);
- a subset of the base UNet's weights trains with it: SD1.5 every attention output projection
  (parameter names containing `to_out`, self- and cross-attention), SDXL the cross-attention ones
  (`.*attn2.*to_out.*`); everything else in the UNet stays frozen;
- learning rates: the UNet subset at the run's learning rate (1e-5 in the released scripts), the
  module at 10× that (SD1.5: `lr * 10`; SDXL: 1e-4 against 1e-5); AdamW, weight decay 1e-2;
- the feature is added with a fixed `scale` (the scripts' default 1.0; the SD1.5 example uses 0.35
  for a canny-like task). The pack applies the trained module at `strength`, so use the training
  scale as the strength when sampling;
- the release files: the module under its released names, and the subset's increments
  W_trained − W_pretrained in the base's own names (`unet_weight_increasements` in the release;
  here `<output stem>.unet_weight_increments.safetensors` beside the module). The pack's
  LoadControlNet reads both (the second as its `unet_weights`).

Where the feature enters: SD1.5 after down block 0 (ldm input block 3), SDXL after conv_in (input
block 0), as the released UNets do (see controlnet_core/controlnext/model.py).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ._core import (MODULE_A_CONFIG, SD15, SDXL, VARIANT_FAMILIES, Addition, ControlNeXtModel, InputError, UNetCall)
from .interfaces import ControlSignal, FrozenBase, TextCondition, TrainableControl
from .output import save_safetensors

MODULE_LR_FACTOR = 10.0
DEFAULT_SCALE = 1.0
# Which UNet parameters train with the module (the released scripts' selection), by base family.
UNET_SUBSET_PATTERNS = {"sd1": r".*to_out.*", "sdxl": r".*attn2.*to_out.*"}
VARIANT_OF_FAMILY = {"sd1": SD15, "sdxl": SDXL}
UNET_WEIGHTS_SUFFIX = ".unet_weight_increments.safetensors"
MODEL_CHANNEL_KEYS = ("conv_in.weight", "input_blocks.0.0.weight")


def unet_weights_path(output: str | os.PathLike) -> Path:
    """Where the UNet subset's increments go, beside the module file."""
    output = Path(output)
    return output.with_name(output.stem + UNET_WEIGHTS_SUFFIX)


def _model_channels(unet_state: Mapping[str, torch.Tensor]) -> int:
    for key in MODEL_CHANNEL_KEYS:
        if key in unet_state:
            return int(unet_state[key].shape[0])
    raise InputError(f"the base UNet has none of {MODEL_CHANNEL_KEYS}: cannot size the ControlNeXt feature")


class TrainableControlNeXt(TrainableControl):
    kind = "controlnext"

    def __init__(self, model: ControlNeXtModel, family: str, *, scale: float = DEFAULT_SCALE,
                 module_lr_factor: float = MODULE_LR_FACTOR) -> None:
        self.model = model.float().requires_grad_(True)
        self.family = family
        self.scale = float(scale)
        self.module_lr_factor = float(module_lr_factor)
        self.pattern = UNET_SUBSET_PATTERNS[family]
        self.unet_parameters: dict[str, torch.nn.Parameter] = {}
        self.pretrained: dict[str, torch.Tensor] = {}

    @classmethod
    def from_base(cls, base: FrozenBase, *, scale: float = DEFAULT_SCALE, module_lr_factor: float = MODULE_LR_FACTOR,
                  seed: int = 0) -> "TrainableControlNeXt":
        """A fresh module for `base` (SD1.5 or SDXL): the released architecture with its feature as wide
        as the UNet's first level (320 for the released bases), PyTorch's default init drawn from `seed`."""
        variant = VARIANT_OF_FAMILY.get(base.family)
        if variant is None:
            raise InputError(f"ControlNeXt's released training covers SD1.5 and SDXL bases; this base is {base.family}")
        config = dataclasses.replace(MODULE_A_CONFIG, variant=variant,
                                     final_out_channels=_model_channels(base.unet_state_dict()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ControlNeXtModel(config)
        return cls(model, base.family, scale=scale, module_lr_factor=module_lr_factor)

    def attach(self, base: FrozenBase) -> None:
        if VARIANT_FAMILIES[self.model.config.variant] != base.family:
            raise InputError(f"this ControlNeXt module is for {self.family} but the base model is {base.family}")
        self.to(base.device)
        pattern = re.compile(self.pattern)
        self.unet_parameters, self.pretrained = {}, {}
        for name, parameter in base.named_unet_parameters():
            if pattern.match(name):
                parameter.data = parameter.data.float()  # full-precision master weights, as the release does
                parameter.requires_grad_(True)
                self.unet_parameters[name] = parameter
                self.pretrained[name] = parameter.detach().to("cpu", copy=True)
        if not self.unet_parameters:
            raise InputError(f"no UNet parameter of the base matches ControlNeXt's trainable subset {self.pattern!r}")

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters()) + list(self.unet_parameters.values())

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        return [{"params": list(self.model.parameters()), "lr": learning_rate * self.module_lr_factor},
                {"params": list(self.unet_parameters.values()), "lr": learning_rate}]

    def signal(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
               hint: torch.Tensor) -> ControlSignal:
        call = UNetCall(x_t, timesteps, text.context, text.y)
        frames = torch.arange(hint.shape[0], device=hint.device)
        scale = self.scale
        stream = [Addition(a.target, a.slot, lambda hidden, inject=a.value: inject(hidden) * scale)
                  for a in self.model.additions(call, hint, frames)]
        return ControlSignal(stream=stream)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"module.{k}": v for k, v in self.model.state_dict().items()}
        state.update({f"unet.{name}": p.detach() for name, p in self.unet_parameters.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        module = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
        unet = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
        if set(unet) != set(self.unet_parameters):
            raise InputError("the checkpoint's UNet weights are not this ControlNeXt's trainable subset")
        self.model.load_state_dict(module, strict=True)
        with torch.no_grad():
            for name, value in unet.items():
                self.unet_parameters[name].copy_(value)

    def describe(self) -> dict:
        config = self.model.config
        return {"kind": self.kind, "variant": config.variant, "final_out_channels": config.final_out_channels,
                "scale": self.scale, "module_lr_factor": self.module_lr_factor, "unet_subset": self.pattern}

    def unet_weight_increments(self) -> dict[str, torch.Tensor]:
        """W_trained − W_pretrained of the UNet subset, in the base's own parameter names."""
        return {name: p.detach().float().cpu() - self.pretrained[name] for name, p in self.unet_parameters.items()}

    def save(self, path: str | os.PathLike, dtype: torch.dtype, metadata: Mapping[str, str] | None = None) -> None:
        """The module under its released names at `path`, and the UNet subset's increments beside it
        (unet_weights_path). Written atomically; if the module cannot be written, neither is left."""
        companion = unet_weights_path(path)
        save_safetensors(self.unet_weight_increments(), companion, dtype, metadata)
        try:
            save_safetensors(self.model.state_dict(), path, dtype, metadata)
        except BaseException:
            companion.unlink(missing_ok=True)
            raise
