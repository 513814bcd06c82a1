"""ControlNetModel: the ldm-style ControlNet (SD1.x, SD2.x, SDXL) with original parameter names.

A trainable copy of the UNet encoder reads the latent plus an embedded hint image; after each
encoder block a zero-initialised 1×1 conv ("zero conv") turns its features into the residual for
the matching UNet skip connection, and `middle_block_out` does the same for the middle block.

Shapes for a latent x of B×4×h×w:
  hint            B×hint_channels×8h×8w, values in [0, 1]
  hint embedding  B×model_channels×h×w (input_hint_block output; depends only on the hint)
  down residuals  config.num_down_residuals tensors, residual i is B×C_i×(h/f_i)×(w/f_i)
  mid residual    B×C_mid×(h/f)×(w/f)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ControlNetError, InputError
from ..ldm.blocks import Downsample, ResBlock, SpatialTransformer, TimestepEmbedSequential, timestep_embedding
from ..modes import controlnet_soft_weights
from ..ops import default_operations, with_gemm_convs
from ..protocol import Addition, ControlModel, HintSpec, Target, UNetCall, UNetLayout, family_name, take_frames
from .config import ControlNetConfig

# input_hint_block: (in, out, stride) of its eight 3×3 convs; SiLU sits between them, so the convs
# are at even indices 0, 2, …, 14 and the last one (index 14) starts at zero.
HINT_BLOCK_CONVS = ((None, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1),
                    (96, 256, 2), (256, None, 1))
HINT_DOWNSCALE = 8


class Residuals(NamedTuple):
    down: list[torch.Tensor]
    mid: torch.Tensor


def residual_additions(result: Residuals) -> list[Addition]:
    """A ControlNet's residuals as protocol additions: skip i in slot i, the middle one last."""
    additions = [Addition(Target.skip(i), i, residual) for i, residual in enumerate(result.down)]
    return additions + [Addition(Target.middle(), len(result.down), result.mid)]


class ControlNetModel(ControlModel):
    """The ControlNet as a control system (protocol.py): slots are the skip residuals in encoder order,
    then the middle one; `prepare` is the hint block (it depends only on the control image)."""

    system = "ControlNet"
    row_inputs = ("x", "timesteps", "context", "y")  # each row on its own (per-sample norms and attention)

    def __init__(self, config: ControlNetConfig, device=None, dtype=None, operations=default_operations,
                 compute_dtype: torch.dtype | None = None) -> None:
        """operations: the layer classes (controlnet_core.ops); compute_dtype: the dtype inputs are cast
        to when it differs from the weights' storage dtype (the layers then cast weights per call)."""
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        ops = with_gemm_convs(operations)  # its wide bottom convs run at every step: see ops.GemmConv2dMixin
        kw = {"device": device, "dtype": dtype}
        block_kw = {**kw, "operations": ops}
        ch = config.model_channels
        time_dim = ch * 4
        groups = config.norm_groups

        self.time_embed = nn.Sequential(ops.Linear(ch, time_dim, **kw), nn.SiLU(), ops.Linear(time_dim, time_dim, **kw))
        if config.adm_in_channels is not None:
            # SDXL: pooled text embedding + size/crop conditioning, added to the time embedding.
            self.label_emb = nn.Sequential(nn.Sequential(
                ops.Linear(config.adm_in_channels, time_dim, **kw), nn.SiLU(), ops.Linear(time_dim, time_dim, **kw)))

        hint_layers: list[nn.Module] = []
        for conv_in, conv_out, stride in HINT_BLOCK_CONVS:
            if hint_layers:
                hint_layers.append(nn.SiLU())
            hint_layers.append(ops.Conv2d(conv_in or config.hint_channels, conv_out or ch, 3, stride=stride,
                                          padding=1, **kw))
        self.input_hint_block = nn.Sequential(*hint_layers)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(ops.Conv2d(config.in_channels, ch, 3, padding=1, **kw))])
        self.zero_convs = nn.ModuleList([self._zero_conv(ch, ops, **kw)])
        depths = list(config.transformer_depth)
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                out_ch = mult * config.model_channels
                layers: list[nn.Module] = [ResBlock(ch, time_dim, out_ch, groups=groups, **block_kw)]
                ch = out_ch
                depth = depths.pop(0)
                if depth > 0:
                    heads, dim_head = config.heads_for(ch)
                    layers.append(SpatialTransformer(ch, heads, dim_head, depth, config.context_dim,
                                                     config.use_linear_projection, groups=groups, **block_kw))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(self._zero_conv(ch, ops, **kw))
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, **block_kw)))
                self.zero_convs.append(self._zero_conv(ch, ops, **kw))

        middle: list[nn.Module] = [ResBlock(ch, time_dim, groups=groups, **block_kw)]
        if config.transformer_depth_middle >= 0:
            heads, dim_head = config.heads_for(ch)
            middle += [SpatialTransformer(ch, heads, dim_head, config.transformer_depth_middle, config.context_dim,
                                          config.use_linear_projection, groups=groups, **block_kw),
                       ResBlock(ch, time_dim, groups=groups, **block_kw)]
        self.middle_block = TimestepEmbedSequential(*middle)
        self.middle_block_out = self._zero_conv(ch, ops, **kw)

    @staticmethod
    def _zero_conv(channels: int, operations, device=None, dtype=None) -> nn.Sequential:
        # Wrapped in a Sequential so the parameter is `zero_convs.N.0.weight`, as in the original files.
        return nn.Sequential(operations.Conv2d(channels, channels, 1, device=device, dtype=dtype))

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f"skip {i}" for i in range(self.config.num_down_residuals)) + ("middle",)

    @property
    def soft_weights(self) -> tuple[float, ...]:
        return controlnet_soft_weights(self.config.num_down_residuals + 1)

    # ---- the control-system protocol ---------------------------------------------------------------
    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        return HintSpec(latent_height * HINT_DOWNSCALE, latent_width * HINT_DOWNSCALE, self.config.hint_channels)

    def prepare(self, hint: torch.Tensor) -> torch.Tensor:
        return self.embed_hint(hint)

    def additions(self, call: UNetCall, prepared: torch.Tensor, frames: torch.Tensor) -> list[Addition]:
        # Timesteps in the model's dtype, as the host's ControlNet receives them.
        result = self(call.x, None, call.timesteps.to(self.dtype), call.context, call.y,
                      hint_embedding=take_frames(prepared, frames))
        return residual_additions(result)

    def check_fits(self, layout: UNetLayout) -> None:
        cfg = self.config
        problems = []
        expected = list(layout.block_channels) + [layout.middle_channels]
        if cfg.residual_channels() != expected:
            problems.append(f"its {len(cfg.residual_channels())} residuals have channels {cfg.residual_channels()}, "
                            f"the UNet's {len(expected)} skips and middle block have {expected}")
        if layout.context_dim is not None and layout.context_dim != cfg.context_dim:
            problems.append(f"it reads text embeddings of width {cfg.context_dim}, the model gives {layout.context_dim}")
        if cfg.adm_in_channels is not None and layout.adm_in_channels is None:
            problems.append("it needs the pooled-text/size vector (y) that this model does not provide")
        if problems:
            raise ControlNetError(f"{self.label} ({family_name(cfg.family)}) does not fit {layout.name} "
                                  f"({family_name(layout.family)}): " + "; ".join(problems) +
                                  f". Use a ControlNet trained for {family_name(layout.family)}.")

    def embed_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """input_hint_block(hint): B×hint_channels×H×W → B×model_channels×H/8×W/8."""
        if hint.ndim != 4 or hint.shape[1] != self.config.hint_channels:
            raise InputError(f"ControlNet hint: expected B×{self.config.hint_channels}×H×W, found {tuple(hint.shape)}")
        if hint.shape[2] % HINT_DOWNSCALE or hint.shape[3] % HINT_DOWNSCALE:
            raise InputError(f"ControlNet hint: height and width must be multiples of {HINT_DOWNSCALE} "
                             f"(8× the latent), found {tuple(hint.shape[2:])}")
        return self.input_hint_block(hint.to(self.dtype))

    def check_inputs(self, x: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None) -> None:
        """Refuse inputs from another base model with a message naming both sides."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise InputError(f"ControlNet ({cfg.family}) latent: expected B×{cfg.in_channels}×h×w, found {tuple(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise InputError(f"ControlNet ({cfg.family}) latent: height and width must be multiples of {factor}, "
                             f"found {tuple(x.shape[2:])}")
        if context.ndim != 3 or context.shape[-1] != cfg.context_dim:
            raise InputError(
                f"ControlNet ({cfg.family}, context dim {cfg.context_dim}) got a text context of shape "
                f"{tuple(context.shape)}: the ControlNet and the base model are from different families")
        if cfg.adm_in_channels is not None:
            if y is None:
                raise InputError(f"ControlNet ({cfg.family}) needs the pooled/size conditioning `y` "
                                 f"(B×{cfg.adm_in_channels}); the base model gave none (is it an SD1.x/SD2.x model?)")
            if y.shape[-1] != cfg.adm_in_channels:
                raise InputError(f"ControlNet ({cfg.family}) `y`: expected B×{cfg.adm_in_channels}, found {tuple(y.shape)}")

    @staticmethod
    def _match_batch(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
        """A batch of 1 serves every latent; otherwise the batches must be equal."""
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise InputError(f"ControlNet {what} has batch {tensor.shape[0]} but the latent has batch {batch}: "
                         "expected 1 or the same batch")

    def forward(self, x: torch.Tensor, hint: torch.Tensor | None, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, *, hint_embedding: torch.Tensor | None = None,
                extra_emb: torch.Tensor | None = None) -> Residuals:
        """extra_emb: added to the time embedding before the SDXL label embedding (the Union control-type
        embedding, in the released order)."""
        self.check_inputs(x, context, y)
        if hint_embedding is None:
            if hint is None:
                raise InputError("ControlNet forward: give either `hint` or `hint_embedding`")
            hint_embedding = self.embed_hint(hint)
        if hint_embedding.shape[-2:] != x.shape[-2:]:
            raise InputError(f"ControlNet hint embedding is {tuple(hint_embedding.shape[-2:])} but the latent is "
                             f"{tuple(x.shape[-2:])}: the hint must be 8× the latent size")

        dtype = self.dtype
        context = self._match_batch(context, x.shape[0], "text context")
        x, context = x.to(dtype), context.to(dtype)
        emb = self.time_embed(timestep_embedding(timesteps.reshape(-1), self.config.model_channels).to(dtype))
        if extra_emb is not None:
            emb = emb + extra_emb.to(dtype)
        if self.config.adm_in_channels is not None:
            emb = emb + self.label_emb(self._match_batch(y, x.shape[0], "`y`").to(dtype))

        down: list[torch.Tensor] = []
        h = x
        for index, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if index == 0:
                h = h + hint_embedding.to(dtype)
            down.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        return Residuals(down, self.middle_block_out(h))
