"""ControlNet-LLLite (kohya): tiny MLPs that shift the inputs of the UNet's attention projections.

One module per patched projection: attn1 to_q / to_k / to_v and attn2 to_q of every transformer
block in the input blocks and the middle block (the released SDXL files: input blocks 4, 5, 7, 8
and the middle block). For a module acting on a projection whose input is the tokens x (B×N×C, the
block's layer-normed hidden state, row-major h×w):

    cond = conditioning1(hint)                               once per run, B×E×h×w → B×N×E
    x'   = x + up(ReLU(mid(cat([cond, ReLU(down(x))], -1)))) · strength

and the projection reads x' instead of x. conditioning1 is a stack of strided convs (4×4 stride 4,
then 2×2 stride 2, 4×4 stride 4, or 4×4 stride 4 + 2×2 stride 2: "depth" 1, 2, 3) that brings the
hint (8× the latent, values in [-1, 1]) to the block's grid: latent/1, /2 or /4. Cond and uncond
rows are both controlled, as in kohya's code.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ControlNetError
from ..ops import default_operations
from ..protocol import Addition, ControlModel, HintSpec, Target, UNetCall, UNetLayout, take_frames

PREFIX = "lllite_unet"
MODULE_NAME = re.compile(r"^lllite_unet_(?:input_blocks_(\d+)|middle_block)_1_transformer_blocks_(\d+)_"
                         r"(attn1_to_q|attn1_to_k|attn1_to_v|attn2_to_q)$")
HINT_DOWNSCALE = 8
# conditioning1's convs per depth: (kernel = stride, output channels as a fraction of E).
DEPTH_CONVS = {1: ((4, 0.5), (2, 1.0)), 2: ((4, 0.5), (4, 1.0)), 3: ((4, 0.5), (4, 0.5), (2, 1.0))}
DEPTH_DOWNSCALE = {1: 1, 2: 2, 3: 4}  # the embedding's grid relative to the latent


@dataclass(frozen=True)
class LLLiteModuleSpec:
    """One module of a file: where it acts and its sizes (all read from the tensor shapes)."""

    name: str
    block: int | None          # input block; None = the middle block
    transformer: int           # transformer block index inside the block's SpatialTransformer
    projection: str            # "attn1.to_q", "attn1.to_k", "attn1.to_v" or "attn2.to_q"
    depth: int                 # conditioning1 depth: 1, 2 or 3
    in_dim: int                # width of the projection's input
    cond_emb_dim: int          # E
    mlp_dim: int               # M

    @property
    def downscale(self) -> int:
        return DEPTH_DOWNSCALE[self.depth]

    @property
    def where(self) -> str:
        return "middle" if self.block is None else f"input {self.block}"


def module_specs(shapes: Mapping[str, tuple[int, ...]], source: str) -> list[LLLiteModuleSpec]:
    """The modules of an LLLite state dict (key → shape), in a stable order; unsupported modules
    (output blocks, convolution targets, other projections) are refused by name."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        name, _, rest = key.partition(".")
        groups.setdefault(name, {})[rest] = tuple(shape)
    specs, unsupported = [], []
    for name in sorted(groups):
        tensors = groups[name]
        match = MODULE_NAME.match(name)
        down = tensors.get("down.0.weight")
        if match is None or down is None or len(down) != 2:
            unsupported.append(name if match is None else f"{name} ({'convolution' if down else 'incomplete'})")
            continue
        if "conditioning1.4.weight" in tensors:
            depth = 3
        elif tensors.get("conditioning1.2.weight", (0,))[-1] == 4:
            depth = 2
        else:
            depth = 1
        block = None if match.group(1) is None else int(match.group(1))
        projection = match.group(3).replace("_to_", ".to_")
        try:
            cond_emb_dim = 2 * tensors["conditioning1.0.weight"][0]
        except KeyError:
            raise CheckpointError(f"{source}: LLLite module {name} has no conditioning1.0.weight") from None
        specs.append(LLLiteModuleSpec(name, block, int(match.group(2)), projection, depth, down[1], cond_emb_dim,
                                      down[0]))
    if unsupported:
        raise CheckpointError(
            f"{source}: {len(unsupported)} LLLite modules this pack cannot place (e.g. {', '.join(unsupported[:3])}); "
            "it runs the released layout: Linear modules on attn1 to_q/to_k/to_v and attn2 to_q of the input and "
            "middle transformer blocks")
    if not specs:
        raise CheckpointError(f"{source}: no LLLite modules found (keys start with {PREFIX!r})")
    return specs


class LLLiteModule(nn.Module):
    """conditioning1 (the hint embedding), down, mid and up, under the file's own names."""

    def __init__(self, spec: LLLiteModuleSpec, operations=default_operations, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        channels = 3
        for kernel, fraction in DEPTH_CONVS[spec.depth]:
            if layers:
                layers.append(nn.ReLU())
            out = int(spec.cond_emb_dim * fraction)
            layers.append(operations.Conv2d(channels, out, kernel, stride=kernel, **kw))
            channels = out
        self.conditioning1 = nn.Sequential(*layers)
        self.down = nn.Sequential(operations.Linear(spec.in_dim, spec.mlp_dim, **kw), nn.ReLU())
        self.mid = nn.Sequential(operations.Linear(spec.mlp_dim + spec.cond_emb_dim, spec.mlp_dim, **kw), nn.ReLU())
        self.up = nn.Sequential(operations.Linear(spec.mlp_dim, spec.in_dim, **kw))

    def embed(self, hint: torch.Tensor) -> torch.Tensor:
        """B×3×H×W hint in [-1, 1] → B×(H/8f·W/8f)×E tokens, row-major."""
        return self.conditioning1(hint).flatten(2).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.up(self.mid(torch.cat([cond, self.down(tokens)], dim=-1)))


class LLLiteModel(ControlModel):
    """An LLLite file as a control system: `prepare` embeds the hint for every module (once per
    run); `additions` gives one attention-input function per module. Slots are the UNet blocks it
    touches ("input 4" … "middle"): per-slot weights scale all of a block's modules."""

    system = "LLLite"

    def __init__(self, specs: list[LLLiteModuleSpec], operations=default_operations, device=None, dtype=None,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.specs = list(specs)
        self.compute_dtype = compute_dtype
        for spec in self.specs:  # registered under the file's module names, so state-dict keys are the file's
            self.add_module(spec.name, LLLiteModule(spec, operations, device=device, dtype=dtype))
        blocks = sorted({spec.block for spec in self.specs if spec.block is not None})
        self._slots = tuple(f"input {b}" for b in blocks) + (("middle",) if any(
            spec.block is None for spec in self.specs) else ())

    @property
    def family(self) -> str:
        # Only SD1.x/SD2.x UNets have transformers at full latent size (input blocks 1, 2).
        return "sd1" if any(spec.block is not None and spec.block <= 2 for spec in self.specs) else "sdxl"

    @property
    def slots(self) -> tuple[str, ...]:
        return self._slots

    @property
    def variant(self) -> str:
        spec = self.specs[0]
        return f"{len(self.specs)} modules, cond emb {spec.cond_emb_dim}, mlp {spec.mlp_dim}"

    def module(self, spec: LLLiteModuleSpec) -> LLLiteModule:
        return getattr(self, spec.name)

    # ---- the control-system protocol ---------------------------------------------------------------
    def hint_spec(self, latent_height: int, latent_width: int) -> HintSpec:
        return HintSpec(latent_height * HINT_DOWNSCALE, latent_width * HINT_DOWNSCALE, 3, value_range=(-1.0, 1.0))

    def prepare(self, hint: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every module's condition tokens. A block's grid has sides rounded up (the UNet's stride-2
        convs), the strided embedding rounds down: where they differ (latent sides not multiples of
        2 or 4) the hint is first resized (nearest-exact) to 8× that grid, as Advanced-ControlNet does."""
        height, width = hint.shape[-2] // HINT_DOWNSCALE, hint.shape[-1] // HINT_DOWNSCALE
        hints: dict[int, torch.Tensor] = {}
        out = {}
        hint = hint.to(self.dtype)
        for spec in self.specs:
            factor = spec.downscale
            if factor not in hints:
                size = (-(-height // factor) * factor * HINT_DOWNSCALE, -(-width // factor) * factor * HINT_DOWNSCALE)
                hints[factor] = hint if tuple(hint.shape[-2:]) == size else \
                    F.interpolate(hint, size=size, mode="nearest-exact")
            out[spec.name] = self.module(spec).embed(hints[factor])
        return out

    def additions(self, call: UNetCall, prepared: dict[str, torch.Tensor], frames: torch.Tensor) -> list[Addition]:
        slot_of = {name: index for index, name in enumerate(self._slots)}
        return [Addition(Target.attention(spec.block, spec.transformer, spec.projection), slot_of[spec.where],
                         self._module_function(spec, take_frames(prepared[spec.name], frames)))
                for spec in self.specs]

    def _module_function(self, spec: LLLiteModuleSpec, cond: torch.Tensor):
        module, dtype = self.module(spec), self.dtype

        def shift(tokens: torch.Tensor) -> torch.Tensor:
            if tokens.shape[1] != cond.shape[1] or tokens.shape[-1] != spec.in_dim:
                raise ControlNetError(
                    f"{self.label}: module {spec.name} expects {cond.shape[1]} tokens of width {spec.in_dim} at "
                    f"{spec.where}, found {tuple(tokens.shape)}: the base UNet's blocks differ from the ones it "
                    "was trained on")
            return module(tokens.to(dtype), cond)

        return shift

    def check_fits(self, layout: UNetLayout) -> None:
        """Each module's block must exist with the width its MLP reads and the grid its embedding has."""
        problems = []
        for spec in self.specs:
            if spec.block is None:
                channels, downscale = layout.middle_channels, layout.block_downscale[-1]
            elif spec.block < layout.num_input_blocks:
                channels, downscale = layout.block_channels[spec.block], layout.block_downscale[spec.block]
            else:
                problems.append(f"{spec.name} acts in input block {spec.block}, which it does not have")
                continue
            if (channels, downscale) != (spec.in_dim, spec.downscale):
                problems.append(f"{spec.name} reads {spec.in_dim} channels at 1/{spec.downscale} of the latent, "
                                f"{spec.where} has {channels} at 1/{downscale}")
        if problems:
            raise ControlNetError(f"{self.label} does not fit {layout.name}: " + "; ".join(problems[:3]) +
                                  (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "") +
                                  ". LLLite files are made for one base architecture (the released ones: SDXL).")
