"""OpenPose hand keypoint network (CMU "Hand Keypoint Detection ... Multiview Bootstrapping").

Published file: ``hand_pose_model.pth``. A VGG-style front end at stride 8 and six stages that
each predict 22 heatmaps (21 hand keypoints + background) for a square crop around one hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import POOL, ConvSpec, build_stack, refinement_stage, vgg_front


@dataclass(frozen=True)
class HandPoseConfig:
    """Defaults are the published 21-keypoint model."""

    num_stages: int = 6
    heatmap_channels: int = 22
    feature_channels: int = 128
    stride: int = 8


def _backbone_specs(feature_channels: int) -> list[ConvSpec | str]:
    return vgg_front(
        [
            ("conv1_1", 3, 64), ("conv1_2", 64, 64), POOL,
            ("conv2_1", 64, 128), ("conv2_2", 128, 128), POOL,
            ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), POOL,
            ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
            ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3_CPM", 512, feature_channels),
        ]
    )  # fmt: skip


class HandPoseModel(nn.Module):
    """Input: B×3×H×W, BGR, ``pixel / 256 - 0.5``. Output: B×22×H/8×W/8 heatmaps of the last stage."""

    def __init__(self, config: HandPoseConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HandPoseConfig()
        features = config.feature_channels
        self.backbone = build_stack(_backbone_specs(features))
        first = build_stack(
            [
                ConvSpec("conv6_1_CPM", features, 512, 1),
                ConvSpec("conv6_2_CPM", 512, config.heatmap_channels, 1, relu=False),
            ]
        )
        refined_in = config.heatmap_channels + features
        self.stages = nn.ModuleList(
            [first]
            + [
                build_stack(refinement_stage(f"stage{stage}", refined_in, config.heatmap_channels))
                for stage in range(2, config.num_stages + 1)
            ]
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        heatmaps = self.stages[0](features)
        for stage in self.stages[1:]:
            heatmaps = stage(torch.cat([heatmaps, features], dim=1))
        return heatmaps
