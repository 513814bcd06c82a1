"""Loading the published OpenPose files ``body_pose_model.pth``, ``hand_pose_model.pth`` and ``facenet.pth``.

Those files (Caffe models converted by pytorch-openpose) store every conv under its bare layer
name, e.g. ``conv1_1.weight`` or ``Mconv7_stage6_L2.bias``. Our modules nest the same layer names
under ``backbone.`` / ``stages.N.`` (``stages.5.heatmap.Mconv7_stage6_L2.bias``); the table below is
derived from the module tree, and a file saved from our own modules (full names) loads as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..common.checkpoint import build_and_load, check_state_dict, expected_shapes, read_state_dict
from .body_model import BodyPoseConfig, BodyPoseModel
from .face_model import FacePoseConfig, FacePoseModel
from .hand_model import HandPoseConfig, HandPoseModel

ANNOTATOR = "OpenPose"
BODY_WEIGHT_FILE = "body_pose_model.pth"
HAND_WEIGHT_FILE = "hand_pose_model.pth"
FACE_WEIGHT_FILE = "facenet.pth"
WEIGHT_SOURCE = "https://huggingface.co/lllyasviel/Annotators"


def published_key_map(model: nn.Module) -> dict[str, str]:
    """Published key (``layer.param``) → our state-dict key, for every parameter of ``model``."""
    mapping: dict[str, str] = {}
    for key in model.state_dict():
        published = ".".join(key.split(".")[-2:])
        if published in mapping:  # layer names are unique in both networks; guard the assumption
            raise RuntimeError(f"layer name {published!r} is used twice in {type(model).__name__}")
        mapping[published] = key
    return mapping


def to_published_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the published key names (what the released .pth files hold)."""
    state = model.state_dict()
    return {published: state[ours] for published, ours in published_key_map(model).items()}


def _load(path: str | Path, factory: Callable[[], nn.Module], architecture: str) -> nn.Module:
    state = read_state_dict(path, annotator=ANNOTATOR)
    with torch.device("meta"):
        template = factory()
    ours = expected_shapes(template)
    if set(state) == set(ours):
        renamed = state  # saved from our own module
    else:
        key_map = published_key_map(template)
        expected = {published: ours[key] for published, key in key_map.items()}
        check_state_dict(state, expected, path=path, annotator=ANNOTATOR, architecture=architecture)
        renamed = {key_map[published]: tensor for published, tensor in state.items()}
    check_state_dict(renamed, ours, path=path, annotator=ANNOTATOR, architecture=architecture)
    return build_and_load(factory, renamed)


def load_body_model(path: str | Path, config: BodyPoseConfig | None = None) -> BodyPoseModel:
    """Read, validate and load a ``body_pose_model.pth`` (float32, eval mode, CPU)."""
    config = config or BodyPoseConfig()
    model = _load(path, lambda: BodyPoseModel(config), "the OpenPose body model (body_pose_model.pth)")
    assert isinstance(model, BodyPoseModel)
    return model


def load_hand_model(path: str | Path, config: HandPoseConfig | None = None) -> HandPoseModel:
    """Read, validate and load a ``hand_pose_model.pth`` (float32, eval mode, CPU)."""
    config = config or HandPoseConfig()
    model = _load(path, lambda: HandPoseModel(config), "the OpenPose hand model (hand_pose_model.pth)")
    assert isinstance(model, HandPoseModel)
    return model


def load_face_model(path: str | Path, config: FacePoseConfig | None = None) -> FacePoseModel:
    """Read, validate and load a ``facenet.pth`` (float32, eval mode, CPU)."""
    config = config or FacePoseConfig()
    model = _load(path, lambda: FacePoseModel(config), "the OpenPose face model (facenet.pth)")
    assert isinstance(model, FacePoseModel)
    return model
