"""UnionControl: a Union network with the control type one stack entry chose.

Views of one network share its weights (`with_type` makes another), and the stack runs every entry
whose view shares a network in one forward (`fusion_key` / `fused_additions`, protocol.py): one
multi-hot type vector, the shared hint encoder run once per condition (once per run: it depends on
the image only), the condition transformer, the fused hint added after conv_in.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from ..errors import ControlNetError
from ..protocol import Addition, ControlModel, FusedMember, HintSpec, UNetCall, UNetLayout
from .control_types import TYPE_NAMES, control_type_id
from .model import UnionControlNetModel


class UnionControl(ControlModel):
    """A Union ControlNet as a stack entry sees it: the shared network plus a control type (None:
    no type, which runs as the released model does without one: the hint features added after
    conv_in as a plain ControlNet's, no condition transformer, the all-zero type vector's
    embedding, as the host's "auto")."""

    system = "Union"

    def __init__(self, network: UnionControlNetModel, control_type: str | int | None = None) -> None:
        super().__init__()
        self.network = network
        self.control_type = None if control_type is None else \
            control_type_id(control_type, network.num_control_types, network.label)

    def with_type(self, control_type: str | int | None) -> "UnionControl":
        """Another view of the same network (same weights) with this control type."""
        view = UnionControl(self.network, control_type)
        view.source = self.source
        return view

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.network.family

    @property
    def slots(self) -> tuple[str, ...]:
        return self.network.slots

    @property
    def soft_weights(self) -> tuple[float, ...]:
        return self.network.soft_weights

    @property
    def type_name(self) -> str:
        return "no type" if self.control_type is None else TYPE_NAMES[self.control_type]

    @property
    def variant(self) -> str:
        return f"{self.network.num_control_types} control types, {self.type_name}"

    @property
    def label(self) -> str:
        return f"Union ControlNet {self.source!r} ({self.type_name})"

    @property
    def source(self) -> str:
        return self.network.source

    @source.setter
    def source(self, value: str) -> None:
        if "network" in self._modules:
            self.network.source = value

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return self.network.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, value: torch.dtype | None) -> None:
        if "network" in self._modules:
            self.network.compute_dtype = value

    # ---- the protocol ------------------------------------------------------------------------------
    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        return self.network.hint_spec(latent_height, latent_width)

    def prepare(self, hint: torch.Tensor) -> torch.Tensor:
        return self.network.embed_hint(hint)   # the shared hint encoder, once per image per run

    def additions(self, call: UNetCall, prepared: Any, frames: torch.Tensor) -> list[Addition]:
        if self.control_type is None:
            return self.network.additions(call, prepared, frames)
        return self.network.fused_members_additions(call, [FusedMember(self, prepared, frames, 1.0)],
                                                    [self.control_type])

    def fusion_key(self) -> Hashable | None:
        # Typed entries on one network fuse; an untyped one runs alone (its hint skips the fusion).
        return None if self.control_type is None else ("union", id(self.network))

    def fused_additions(self, call: UNetCall, members: Sequence[FusedMember]) -> list[Addition]:
        type_ids = []
        for member in members:
            model = member.model
            if not isinstance(model, UnionControl) or model.network is not self.network or model.control_type is None:
                raise ControlNetError(f"{self.label}: a fused Union forward takes typed entries of the same network, "
                                      f"found {getattr(model, 'label', model)!r}")
            type_ids.append(model.control_type)
        return self.network.fused_members_additions(call, members, type_ids)

    def check_fits(self, layout: UNetLayout) -> None:
        self.network.check_fits(layout)
