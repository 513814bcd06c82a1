"""Loading the published ``ZoeD_M12_N.pt`` (``{"model": state_dict}``, keys equal :class:`ZoeDepthModel`'s).

Sizes are read from the file (so smaller test files of the same layout load too): width and depth of
the BEiT, heads from the relative position tables, the reassembly and decoder widths, bins and
attractors. The decoder taps blocks depth/4·k − 1 (5, 11, 17, 23). The attractor strength and the
temperature range are the published ZoeD_N values. Files saved with timm ≥ 0.9 lack the
``relative_position_index`` buffers; they are recomputed.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..common.checkpoint import count_indexed, load_checked, require_tensor
from .model import ZoeConfig, ZoeDepthModel, relative_position_index

ANNOTATOR = "ZoeDepth"
ARCHITECTURE = "a ZoeDepth model (ZoeD_M12_N.pt)"
WEIGHT_FILE = "ZoeD_M12_N.pt"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators (ZoeD_M12_N.pt)"
_BEIT = "core.core.pretrained.model."


def config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> ZoeConfig:
    def tensor(key: str, ndim: int) -> torch.Tensor:
        return require_tensor(state, key, ndim=ndim, path=path, annotator=ANNOTATOR, architecture=ARCHITECTURE)

    embed_dim = int(tensor(_BEIT + "cls_token", 3).shape[-1])
    depth = count_indexed(state, _BEIT + "blocks.")
    table = tensor(_BEIT + "blocks.0.attn.relative_position_bias_table", 2)
    window = (math.isqrt(max(int(table.shape[0]) - 3, 1)) + 1) // 2
    attractors = count_indexed(state, "attractors.")
    return ZoeConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(table.shape[1]),
        mlp_ratio=int(tensor(_BEIT + "blocks.0.mlp.fc1.weight", 2).shape[0]) / embed_dim,
        window=window,
        hooks=tuple(depth * k // 4 - 1 for k in range(1, 5)),
        level_channels=tuple(int(tensor(f"core.core.pretrained.act_postprocess{i}.3.weight", 4).shape[0]) for i in range(1, 5)),
        features=int(tensor("core.core.scratch.layer1_rn.weight", 4).shape[0]),
        num_classes=int(tensor(_BEIT + "head.weight", 2).shape[0]),
        n_bins=int(tensor("seed_bin_regressor._net.2.weight", 4).shape[0]),
        bin_embedding_dim=int(tensor("seed_projector._net.2.weight", 4).shape[0]),
        n_attractors=tuple(int(tensor(f"attractors.{i}._net.2.weight", 4).shape[0]) for i in range(attractors)),
    )


def load_zoe(path: str | Path) -> ZoeDepthModel:
    """Read, validate and load ``path`` into a :class:`ZoeDepthModel` (float32, eval mode, CPU)."""
    return load_checked(path, annotator=ANNOTATOR, architecture=ARCHITECTURE, read_config=config_from_state_dict,
                        build=ZoeDepthModel, complete=_add_position_indices)


def _add_position_indices(state: dict[str, torch.Tensor], expected: object, config: ZoeConfig) -> dict[str, torch.Tensor]:
    """Files saved with timm ≥ 0.9 lack the (constant) relative_position_index buffers: recompute them."""
    index = relative_position_index(config.window, config.window)
    completed = dict(state)
    for block in range(config.depth):
        completed.setdefault(_BEIT + f"blocks.{block}.attn.relative_position_index", index)
    return completed
