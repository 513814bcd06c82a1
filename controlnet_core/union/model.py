"""Union ControlNet (xinsir ControlNet++: controlnet-union-sdxl-1.0 with 6 control types, ProMax with 8).

An SDXL ControlNet whose hint goes through a small fusion stage before it is added after conv_in:

- a control-type embedding: the multi-hot type vector (R×T), each entry embedded sinusoidally
  (256 wide), flattened and put through `control_add_embedding` (linear, SiLU, linear), is added
  to the time embedding (before the SDXL label embedding);
- for each condition k (in type-id order): `cond_k` = the shared hint encoder on its image, a token
  `mean_HW(cond_k) + task_embedding[type_k]`; the condition transformer `transformer_layes` (sic,
  the released name) runs on the tokens; `alpha_k = spatial_ch_projs(token_k)`;
- the fused hint `Σ_k cond_k + alpha_k` is added to conv_in's output, where a plain ControlNet adds
  its hint; the rest is a standard SDXL ControlNet.

The condition transformer of the released model (kept here on purpose) wraps
`nn.MultiheadAttention` with `batch_first=False` but is fed rows×tokens×channels without a permute,
so attention runs across the batch rows, separately for each token position: conditions never
exchange information in it (their only joint signals are the multi-hot type embedding and the
summed hint), and rows of one call with different images do mix. The released forward also appends
a token for `mean_HW(conv_in(x))`; under this attention it cannot reach the condition tokens, which
are the only outputs read. It is kept anyway: the attention kernels batch over token positions, and
the same number of positions gives the same bits as the released code. diffusers'
ControlNetUnionModel reproduces the same behaviour and is the test oracle.

Per-condition strength (several conditions in one forward): each condition's token, feature and
alpha are scaled by its strength and the residuals are not (diffusers' multi-condition semantics);
a single condition leaves them alone and the stack scales the residuals (xinsir's global scale).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..controlnet.config import ControlNetConfig
from ..controlnet.model import ControlNetModel, residual_additions
from ..errors import InputError
from ..ldm.blocks import timestep_embedding
from ..ops import default_operations
from ..protocol import Addition, FusedMember, UNetCall, take_frames
from .control_types import TYPE_NAMES

TYPE_EMBED_DIM = 256      # sinusoidal width of each multi-hot entry (the SDXL time-id width)
TRANSFORMER_HEADS = 8     # fixed in the released code; the file's shapes cannot tell it


@dataclass(frozen=True)
class UnionConfig:
    num_control_types: int          # 6 (controlnet-union-sdxl-1.0) or 8 (ProMax)
    channels: int = 320             # token width = model_channels in every released file
    layers: int = 1
    heads: int = TRANSFORMER_HEADS
    type_embed_dim: int = TYPE_EMBED_DIM


def _cast(parameter: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if parameter is None else parameter.to(device=like.device, dtype=like.dtype)


class RowAxisAttention(nn.Module):
    """`nn.MultiheadAttention(width, heads)` as the released block uses it: input rows×tokens×width,
    read as sequence×batch×width, so attention runs across the rows for each token position.
    Parameters are named as in the file (`in_proj_weight`, `in_proj_bias`, `out_proj.*`)."""

    def __init__(self, width: int, heads: int, device=None, dtype=None) -> None:
        super().__init__()
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width, device=device, dtype=dtype))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width, device=device, dtype=dtype))
        self.out_proj = nn.Linear(width, width, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's own functional attention, the computation nn.MultiheadAttention runs (its fast path
        # needs batch_first): the same kernels as the released module, so the same bits.
        out, _ = F.multi_head_attention_forward(
            x, x, x, self.width, self.heads, _cast(self.in_proj_weight, x), _cast(self.in_proj_bias, x),
            None, None, False, 0.0, _cast(self.out_proj.weight, x), _cast(self.out_proj.bias, x),
            training=False, need_weights=False)
        return out


class ConditionTransformerLayer(nn.Module):
    """Pre-norm attention + QuickGELU MLP (CLIP's residual attention block), attention across rows."""

    def __init__(self, width: int, heads: int, operations=default_operations, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.attn = RowAxisAttention(width, heads, **kw)
        self.ln_1 = operations.LayerNorm(width, **kw)
        self.mlp = nn.Module()
        self.mlp.c_fc = operations.Linear(width, 4 * width, **kw)
        self.mlp.c_proj = operations.Linear(4 * width, width, **kw)
        self.ln_2 = operations.LayerNorm(width, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class ControlTypeEmbedding(nn.Module):
    """Multi-hot control types (R×T) → R×time_dim: each entry embedded as a sinusoid of width
    `embed_dim`, flattened, then linear, SiLU, linear."""

    def __init__(self, num_types: int, embed_dim: int, time_dim: int, operations=default_operations,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_types, self.embed_dim = num_types, embed_dim
        self.linear_1 = operations.Linear(num_types * embed_dim, time_dim, device=device, dtype=dtype)
        self.linear_2 = operations.Linear(time_dim, time_dim, device=device, dtype=dtype)

    def forward(self, multi_hot: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        rows = multi_hot.shape[0]
        embedded = timestep_embedding(multi_hot.flatten(), self.embed_dim).reshape(rows, -1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(embedded)))


@dataclass
class Condition:
    """One condition of a fused forward, for the controlled rows."""

    type_id: int
    features: torch.Tensor                  # the hint encoder's output, rows×C×h×w
    scale: float = 1.0
    mask: torch.Tensor | None = None        # rows×1×h×w, or None


class UnionControlNetModel(ControlNetModel):
    """The Union network: a ControlNetModel plus the control-type embedding and the fusion stage.

    As a control in a stack it is untyped; `UnionControl` (control.py) gives it a control type per
    entry and runs the entries that share it in one forward."""

    system = "Union"

    def __init__(self, config: ControlNetConfig, union: UnionConfig, device=None, dtype=None,
                 operations=default_operations, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__(config, device=device, dtype=dtype, operations=operations, compute_dtype=compute_dtype)
        if union.channels != config.model_channels:
            raise ValueError(f"Union tokens are {union.channels} wide but the hint features have "
                             f"{config.model_channels} channels: they must agree")
        kw = {"device": device, "dtype": dtype}
        self.union_config = union
        self.task_embedding = nn.Parameter(torch.empty(union.num_control_types, union.channels, **kw))
        self.transformer_layes = nn.ModuleList([ConditionTransformerLayer(union.channels, union.heads, operations, **kw)
                                                for _ in range(union.layers)])
        self.spatial_ch_projs = operations.Linear(union.channels, config.model_channels, **kw)
        self.control_add_embedding = ControlTypeEmbedding(union.num_control_types, union.type_embed_dim,
                                                          4 * config.model_channels, operations, **kw)

    @property
    def num_control_types(self) -> int:
        return self.union_config.num_control_types

    @property
    def type_names(self) -> tuple[str, ...]:
        return TYPE_NAMES[:self.num_control_types]

    def control_embedding(self, type_ids: Sequence[int], rows: int) -> torch.Tensor:
        """The control-type embedding of the multi-hot vector of `type_ids` (none: all zero, which
        is not a zero embedding), for `rows` rows."""
        multi_hot = torch.zeros(rows, self.num_control_types, device=self.device)
        if type_ids:
            multi_hot[:, list(type_ids)] = 1.0
        return self.control_add_embedding(multi_hot, self.dtype)

    def fused_hint(self, conditions: Sequence[Condition], sample: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_k s_k·(cond_k + alpha_k) (· mask_k), the hint added after conv_in, conditions in the
        order given (the released code takes them in type-id order). `sample`: conv_in's output,
        whose mean is the released code's last token (no effect on the result but the last bits)."""
        if not conditions:
            raise InputError("Union fused hint: no condition given")
        dtype = self.dtype
        tokens = []
        for condition in conditions:
            token = condition.features.to(dtype).mean(dim=(2, 3)) + self.task_embedding[condition.type_id].to(dtype)
            tokens.append((token if condition.scale == 1.0 else token * condition.scale).unsqueeze(1))
        if sample is not None:
            tokens.append(sample.to(dtype).mean(dim=(2, 3)).unsqueeze(1))
        x = torch.cat(tokens, dim=1)                     # rows × conditions (+ sample) × channels
        for layer in self.transformer_layes:
            x = layer(x)
        fused = None
        for index, condition in enumerate(conditions):
            alpha = self.spatial_ch_projs(x[:, index])[..., None, None]
            features = condition.features.to(dtype)
            if condition.scale != 1.0:
                features, alpha = features * condition.scale, alpha * condition.scale
            term = features + alpha
            if condition.mask is not None:
                term = term * condition.mask.to(device=term.device, dtype=term.dtype)
            fused = term if fused is None else fused + term
        return fused

    def union_additions(self, call: UNetCall, type_ids: Sequence[int], hint: torch.Tensor) -> list[Addition]:
        """One forward with hint embedding `hint` and the control-type embedding of `type_ids`."""
        emb = self.control_embedding(type_ids, call.x.shape[0])
        result = self(call.x, None, call.timesteps.to(self.dtype), call.context, call.y, hint_embedding=hint,
                      extra_emb=emb)
        return residual_additions(result)

    def additions(self, call: UNetCall, prepared: torch.Tensor, frames: torch.Tensor) -> list[Addition]:
        # No control type (the host's "auto"): the hint features go in as a plain ControlNet's do,
        # with the all-zero type vector's embedding; no condition transformer.
        return self.union_additions(call, (), take_frames(prepared, frames))

    def fused_members_additions(self, call: UNetCall, members: Sequence[FusedMember],
                                type_ids: Sequence[int]) -> list[Addition]:
        """Several typed entries in one forward: conditions in type-id order (stack order among
        equal types), each with its strength and mask."""
        order = sorted(range(len(members)), key=lambda i: type_ids[i])
        conditions = []
        for i in order:
            member = members[i]
            features = take_frames(member.prepared, member.frames)
            mask = member.mask(*features.shape[-2:]) if member.mask is not None else None
            conditions.append(Condition(type_ids[i], features, member.strength, mask))
        sample = self.input_blocks[0](call.x.to(self.dtype), None, None)  # conv_in: ~0.1 % of the forward
        return self.union_additions(call, sorted(set(type_ids)), self.fused_hint(conditions, sample))
