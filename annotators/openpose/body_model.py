"""OpenPose COCO body network (CMU, "Realtime Multi-Person 2D Pose Estimation using PAFs").

Published file: ``body_pose_model.pth`` (pytorch-openpose / lllyasviel ControlNet annotators).
A VGG-19 front end at stride 8 feeds six stages; each stage has two branches, part-affinity
fields (38 channels = 19 limbs × (x, y), suffix ``_L1``) and part heatmaps (18 parts + background
= 19 channels, suffix ``_L2``). Stages 2..6 see the previous stage's outputs and the features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import POOL, ConvSpec, build_stack, refinement_stage, vgg_front


@dataclass(frozen=True)
class BodyPoseConfig:
    """Defaults are the published COCO-18 model."""

    num_stages: int = 6
    paf_channels: int = 38
    heatmap_channels: int = 19
    feature_channels: int = 128
    stride: int = 8
    # pytorch-openpose (used to make ControlNet's training maps) leaves a ReLU on the last heatmap
    # layer by a typo; the Caffe original has none. Kept for output parity with those maps.
    relu_on_final_heatmaps: bool = True


def _backbone_specs(feature_channels: int) -> list[ConvSpec | str]:
    return vgg_front(
        [
            ("conv1_1", 3, 64), ("conv1_2", 64, 64), POOL,
            ("conv2_1", 64, 128), ("conv2_2", 128, 128), POOL,
            ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), POOL,
            ("conv4_1", 256, 512), ("conv4_2", 512, 512),
            ("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, feature_channels),
        ]
    )  # fmt: skip


def _first_stage_specs(branch: str, features: int, out_channels: int) -> list[ConvSpec | str]:
    return [
        ConvSpec(f"conv5_1_CPM_{branch}", features, 128, 3),
        ConvSpec(f"conv5_2_CPM_{branch}", 128, 128, 3),
        ConvSpec(f"conv5_3_CPM_{branch}", 128, 128, 3),
        ConvSpec(f"conv5_4_CPM_{branch}", 128, 512, 1),
        ConvSpec(f"conv5_5_CPM_{branch}", 512, out_channels, 1, relu=False),
    ]


class BodyPoseStage(nn.Module):
    """One stage: the PAF branch (``_L1``) and the heatmap branch (``_L2``) side by side."""

    def __init__(self, paf: nn.Sequential, heatmap: nn.Sequential) -> None:
        super().__init__()
        self.paf = paf
        self.heatmap = heatmap


class BodyPoseModel(nn.Module):
    """Input: B×3×H×W, RGB→BGR already applied, scaled to ``pixel / 256 - 0.5`` (H, W multiples of 8).

    Output: ``(pafs B×38×H/8×W/8, heatmaps B×19×H/8×W/8)`` of the last stage.
    """

    def __init__(self, config: BodyPoseConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BodyPoseConfig()
        features = config.feature_channels
        self.backbone = build_stack(_backbone_specs(features))
        stages = [
            BodyPoseStage(
                build_stack(_first_stage_specs("L1", features, config.paf_channels)),
                build_stack(_first_stage_specs("L2", features, config.heatmap_channels)),
            )
        ]
        refined_in = config.paf_channels + config.heatmap_channels + features
        for stage in range(2, config.num_stages + 1):
            heatmap_specs = refinement_stage(f"stage{stage}_L2", refined_in, config.heatmap_channels)
            if stage == config.num_stages and config.relu_on_final_heatmaps:
                last = heatmap_specs[-1]
                assert isinstance(last, ConvSpec)
                heatmap_specs[-1] = ConvSpec(last.name, last.in_channels, last.out_channels, last.kernel_size, relu=True)
            stages.append(
                BodyPoseStage(
                    build_stack(refinement_stage(f"stage{stage}_L1", refined_in, config.paf_channels)),
                    build_stack(heatmap_specs),
                )
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(image)
        hidden = features
        pafs = heatmaps = features
        for stage in self.stages:
            pafs, heatmaps = stage.paf(hidden), stage.heatmap(hidden)
            hidden = torch.cat([pafs, heatmaps, features], dim=1)
        return pafs, heatmaps
