"""Nodes that load the photos and the pose bundled with the pack (annotators/samples).

The example workflows use them so they run on a fresh install: the host's LoadImage reads only
ComfyUI's input folder, which holds none of our files. Names resolve only among the bundled files.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..annotators.common import AnnotatorInputError
from ..annotators.registry import SAMPLES_DIR
from .preprocessor_nodes import KEY_PREFIX, PACK_LABEL

CATEGORY = "conditioning/controlnet pack/samples"
SOURCES = "Sources and licences: annotators/samples/README.md in the pack."


def bundled(suffix: str) -> list[str]:
    """File names of the bundled samples ending in ``suffix``, sorted."""
    return sorted(path.name for path in SAMPLES_DIR.glob(f"*{suffix}") if path.is_file())


def _checked(name: str, choices: list[str], what: str) -> str:
    if name not in choices:  # never a path: only the bundled files
        raise AnnotatorInputError(f"{what}: expected one of the bundled files {choices}, found {name!r}")
    return name


class LoadSampleImage:
    DESCRIPTION = ("A photo bundled with the pack, for the example workflows and for trying the preprocessors "
                   "without uploading anything. " + SOURCES)
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The photo as an RGB image batch of one.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = bundled(".png")
        return {"required": {"sample": (names, {"default": "astronaut.png" if "astronaut.png" in names else names[0],
                                                "tooltip": "astronaut.png: a portrait (pose, depth, edges); "
                                                           "chelsea.png: a cat; coffee.png: a cup on a table "
                                                           "(straight lines, depth)."})}}

    def load(self, sample: str) -> tuple[torch.Tensor]:
        name = _checked(sample, bundled(".png"), "sample")
        with Image.open(SAMPLES_DIR / name) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return (torch.from_numpy(pixels)[None],)


class LoadSamplePose:
    DESCRIPTION = ("A POSE_KEYPOINT pose bundled with the pack (OpenPose JSON), for the example workflows: draw it "
                   "with the Pose render node. astronaut_pose.json is the pose of the person in astronaut.png. "
                   + SOURCES)
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("The pose as POSE_KEYPOINT frames (one frame).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = bundled(".json")
        return {"required": {"pose": (names, {"default": names[0], "tooltip": "A bundled OpenPose JSON file."})}}

    def load(self, pose: str) -> tuple[list[dict]]:
        from ..annotators.openpose import parse_pose_keypoints

        name = _checked(pose, bundled(".json"), "pose")
        return (parse_pose_keypoints((SAMPLES_DIR / name).read_text(encoding="utf-8")),)


NODE_CLASS_MAPPINGS = {f"{KEY_PREFIX}LoadSampleImage": LoadSampleImage, f"{KEY_PREFIX}LoadSamplePose": LoadSamplePose}
NODE_DISPLAY_NAME_MAPPINGS = {f"{KEY_PREFIX}LoadSampleImage": "Load Sample Image" + PACK_LABEL,
                              f"{KEY_PREFIX}LoadSamplePose": "Load Sample Pose" + PACK_LABEL}
