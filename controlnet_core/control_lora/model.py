"""Control-LoRA (Stability): a ControlNet stored as low-rank differences from the base UNet.

For every ≥2-D weight of the UNet-copy part (input blocks, middle block, time and label
embeddings) the file holds `<module>.up` [out, r(,1,1)] and `<module>.down` [r, in(,kh,kw)];
the ControlNet's weight is

    W = W_base + (up.flatten(1) @ down.flatten(1)).reshape(W_base.shape)

with no scale. 1-D tensors (norms, biases) and the ControlNet's own parts (input_hint_block, zero
convs, middle_block_out) are stored in full. W_base is the UNet of the model being sampled, so the
ControlNet exists only once a base is given (`use_base_unet`); until then the model knows its
architecture (from the shapes) but cannot run.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..controlnet import ControlNetConfig, ControlNetModel
from ..controlnet.formats import unet_encoder_from_checkpoint
from ..controlnet.loader import build_from_state_dict
from ..errors import CheckpointError, ControlNetError
from ..ops import default_operations
from ..protocol import Addition, ControlModel, HintSpec, UNetCall, UNetLayout

MARKER = "lora_controlnet"
UP, DOWN = ".up", ".down"


def weight_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ControlNet's key → shape that a Control-LoRA file describes (up/down pairs become the
    `.weight` they make)."""
    out = {}
    for key, shape in shapes.items():
        if key == MARKER or "__" in key or key.endswith(DOWN):
            continue
        if key.endswith(UP):
            module = key[:-len(UP)]
            down = shapes.get(module + DOWN)
            if down is None:
                raise CheckpointError(f"Control-LoRA key {key!r} has no matching {module + DOWN!r}")
            out[module + ".weight"] = (shape[0], *down[1:])
        else:
            out[key] = tuple(shape)
    return out


def merged_weight(base: torch.Tensor, up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """base + up·down in `dtype`, the product taken in `dtype` (as the host's ControlLoraOps does)."""
    product = torch.mm(up.to(dtype).flatten(start_dim=1), down.to(dtype).flatten(start_dim=1))
    return base.to(dtype) + product.reshape(base.shape)


class ControlLoraModel(ControlModel):
    """A Control-LoRA file as a control system. The file's tensors are its parameters; the
    ControlNet they make with a base UNet is built by `use_base_unet` and runs the protocol
    (residuals on every skip and the middle block, as a ControlNet)."""

    system = "Control-LoRA"
    uses_base_unet = True

    def __init__(self, tensors: Mapping[str, torch.Tensor], config: ControlNetConfig, *,
                 operations=default_operations, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.operations = operations
        self.file_tensors = nn.Module()  # flat: "." cannot sit in a parameter name, "__" never occurs in the keys
        for key, tensor in tensors.items():
            self.file_tensors.register_parameter(key.replace(".", "__"), nn.Parameter(tensor, requires_grad=False))
        with torch.device("meta"):
            architecture = ControlNetModel(config, operations=operations)
        architecture.system = self.system
        self.__dict__["_architecture"] = architecture  # shapes, slots, checks; never a submodule
        self.__dict__["_control"] = None               # the ControlNet built from a base UNet

    # ---- the file ----------------------------------------------------------------------------------
    def tensor(self, key: str) -> torch.Tensor | None:
        return getattr(self.file_tensors, key.replace(".", "__"), None)

    @property
    def rank(self) -> int:
        ranks = [p.shape[0] for name, p in self.file_tensors.named_parameters() if name.endswith("__down")]
        return max(ranks) if ranks else 0

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def slots(self) -> tuple[str, ...]:
        return self._architecture.slots

    @property
    def soft_weights(self) -> tuple[float, ...]:
        return self._architecture.soft_weights

    @property
    def variant(self) -> str:
        return f"rank {self.rank}, {self.config.family}"

    def run_memory(self) -> int:
        """Bytes of the ControlNet a run builds (its weights, in this model's dtype)."""
        count = sum(p.numel() for p in self._architecture.parameters())
        return count * torch.empty((), dtype=self.weight_dtype).element_size()

    # ---- the base UNet -------------------------------------------------------------------------------
    @torch.no_grad()
    def use_base_unet(self, unet_state_dict: Mapping[str, torch.Tensor] | None, name: str = "the base model") -> None:
        """Build the ControlNet from these UNet weights (ldm names, with or without the
        `diffusion_model.` / `model.diffusion_model.` prefix, or diffusers names), or drop it (None).
        The same tensors, unedited since the last build, keep the ControlNet already built.

        Weights with an up/down pair become base + up·down; those stored in full are the file's;
        any other ControlNet weight is the base's own. Merged weights are computed in this model's
        dtype on its device; base tensors used as they are share memory with the base."""
        if unet_state_dict is None:
            self.__dict__["_control"] = None
            self.__dict__["_built_from"] = None
            return
        base = unet_encoder_from_checkpoint(unet_state_dict, name)
        dtype, device = self.weight_dtype, self.device
        # The host starts a run once per conditioning entry (cond and uncond): the same weights,
        # unchanged (same storage, no in-place edit), need no second build (nor its memory).
        built_from = (dtype, device, tuple((key, tensor.data_ptr(), tensor.dtype, tensor.device,
                                            0 if tensor.is_inference() else tensor._version)
                                           for key, tensor in sorted(base.items())))
        if self._control is not None and self.__dict__.get("_built_from") == built_from:
            return
        merged, problems = {}, []
        for key, parameter in self._architecture.state_dict().items():
            shape = tuple(parameter.shape)
            module = key[:-len(".weight")] if key.endswith(".weight") else None
            up = None if module is None else self.tensor(module + UP)
            if up is not None:
                if key not in base or tuple(base[key].shape) != shape:
                    found = "absent" if key not in base else f"{tuple(base[key].shape)}"
                    problems.append(f"{key}: needs {shape}, the base has {found}")
                    continue
                merged[key] = merged_weight(base[key].to(device), up, self.tensor(module + DOWN), dtype)
            elif self.tensor(key) is not None:
                merged[key] = self.tensor(key)
            elif key in base and tuple(base[key].shape) == shape:
                merged[key] = base[key].to(device=device, dtype=dtype)
            else:
                problems.append(f"{key}: in neither the file nor the base")
        if problems:
            raise ControlNetError(f"{self.label} cannot be built from {name}: {len(problems)} weights do not match "
                                  f"({'; '.join(problems[:3])}). It is made for a {self.config.family} UNet.")
        control = build_from_state_dict(merged, self.config, source=self.source, dtype=dtype, device=device,
                                        operations=self.operations, compute_dtype=self.compute_dtype)
        control.source = self.source
        self.__dict__["_control"] = control
        self.__dict__["_built_from"] = built_from

    @property
    def control(self) -> ControlNetModel:
        """The ControlNet built by the last `use_base_unet`."""
        if self._control is None:
            raise ControlNetError(f"{self.label} has no base UNet yet: it is built from the weights of the model "
                                  "being sampled. Pass base_unet=... to load_control, or call use_base_unet(state dict)")
        return self._control

    # ---- the control-system protocol: a ControlNet once built ---------------------------------------------
    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        return self._architecture.hint_spec(latent_height, latent_width)

    def prepare(self, hint: torch.Tensor) -> Any:
        return self.control.prepare(hint)  # the hint block is stored in full: it does not depend on the base

    def additions(self, call: UNetCall, prepared: Any, frames: torch.Tensor) -> list[Addition]:
        return self.control.additions(call, prepared, frames)

    def check_fits(self, layout: UNetLayout) -> None:
        self._architecture.source = self.source
        self._architecture.check_fits(layout)
