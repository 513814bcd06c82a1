"""Loading published Depth Anything V2 files (keys equal :class:`DepthAnythingV2Model`'s names).

The encoder size is read from the file (embedding width and block count), so the vits file and
the larger vitb / vitl files load through the same function; the giant (vitg, SwiGLU MLP) is not
supported. The metric-depth fine-tunes (``depth_anything_v2_metric_*``) share the vitl key layout
but predict distance (far = large) through a different head activation; they are not supported
and would give inverted maps.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.checkpoint import (
    CheckpointMismatchError,
    build_and_load,
    check_state_dict,
    expected_shapes,
    read_state_dict,
    require_tensor,
)
from .model import DepthAnythingV2Config, DepthAnythingV2Model

ANNOTATOR = "Depth Anything V2"
WEIGHT_FILE = "depth_anything_v2_vits.pth"
WEIGHT_SOURCE = "https://huggingface.co/depth-anything/Depth-Anything-V2-Small (depth_anything_v2_vits.pth)"
_EMBED_DIM_TO_ENCODER = {384: "vits", 768: "vitb", 1024: "vitl"}


def config_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> DepthAnythingV2Config:
    """Pick the preset whose embedding width matches the file; the full key check comes after."""
    pos_embed = state.get("pretrained.pos_embed")
    if pos_embed is None:  # keys under another prefix: size the model anyway, the key check names the prefix
        pos_embed = next((value for key, value in state.items() if key.endswith(".pos_embed")), None)
    if pos_embed is None or pos_embed.ndim != 3:
        pos_embed = require_tensor(
            state, "pretrained.pos_embed", ndim=3, path=path, annotator=ANNOTATOR, architecture="a Depth Anything V2 model"
        )
    embed_dim = int(pos_embed.shape[-1])
    if embed_dim not in _EMBED_DIM_TO_ENCODER:
        raise CheckpointMismatchError(
            f"{ANNOTATOR}: weight file '{path}': expected an encoder width of 384 (vits), 768 (vitb) or "
            f"1024 (vitl), found {embed_dim} (the giant vitg model is not supported)"
        )
    return DepthAnythingV2Config.preset(_EMBED_DIM_TO_ENCODER[embed_dim])


def load_depth_anything_v2(path: str | Path) -> DepthAnythingV2Model:
    """Read, validate and load ``path`` (float32, eval mode, CPU)."""
    state = read_state_dict(path, annotator=ANNOTATOR)
    config = config_from_state_dict(state, path)
    with torch.device("meta"):
        expected = expected_shapes(DepthAnythingV2Model(config))
    check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture="a Depth Anything V2 model")
    return build_and_load(lambda: DepthAnythingV2Model(config), state)
