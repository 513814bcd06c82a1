"""OpenPose face landmark network (CMU OpenPose ``pose_iter_116000.caffemodel``, converted to PyTorch).

Published file: ``facenet.pth`` (lllyasviel/Annotators). It is the hand network's architecture
(VGG-style front end at stride 8, then six stages of heatmaps) with 71 heatmaps: the 70 face
keypoints of OpenPose's face model (68 landmarks + 2 pupils) and the background. Its keys are the
same bare layer names as the hand file (``conv1_1.weight`` ... ``Mconv7_stage6.bias``); only the
heatmap convolutions differ in shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from .hand_model import HandPoseConfig, HandPoseModel

FACE_KEYPOINT_COUNT = 70


@dataclass(frozen=True)
class FacePoseConfig(HandPoseConfig):
    """Defaults are the published 70-keypoint model (71 heatmaps with the background)."""

    heatmap_channels: int = FACE_KEYPOINT_COUNT + 1


class FacePoseModel(HandPoseModel):
    """Input: B×3×H×W, BGR, ``pixel / 256 - 0.5`` (the reference feeds 384×384 face crops).

    Output: B×71×H/8×W/8 heatmaps of the last stage.
    """

    def __init__(self, config: FacePoseConfig | None = None) -> None:
        super().__init__(config or FacePoseConfig())
