"""ComfyUI nodes for the annotators: one generic Preprocessor plus a node per annotator with parameters.

Everything about an annotator (parameters, defaults, ranges, help, weight files) comes from
``annotators.registry``; this module only turns that table into node inputs, converts between
ComfyUI tensors and numpy, drives the host's progress bar over the batch, and saves a preview.
Neural weights are read from ``models/annotators`` (registered with folder_paths, so
extra_model_paths.yaml can add more folders); nothing is ever downloaded. Their torch modules are
handed to the host's model manager (a ModelPatcher loaded with ``load_models_gpu``), which moves
them to the GPU for a run and offloads them like any other model when memory is needed.
"""
from __future__ import annotations

import os
import random
import weakref
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import numpy as np
import torch
from PIL import Image

from ..annotators import neural
from ..annotators.common import MissingWeightsError
from ..annotators.registry import (
    INPUT_DEPTH,
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_POSE,
    REGISTRY,
    AnnotatorSpec,
    ParamSpec,
    run_annotator,
)

KEY_PREFIX = "ControlNetPack_"
CATEGORY = "conditioning/controlnet pack/preprocessors"
# Appended to every display name: the host has a "Canny" node and comfyui_controlnet_aux an
# "Inpaint Preprocessor", "Tile", "Content Shuffle", ...; the search must tell ours apart.
PACK_LABEL = " (ControlNet Pack)"
MODELS_FOLDER = "annotators"
MAX_RESOLUTION = 8192
PREVIEW_MAX_FRAMES = 16  # a long video batch would otherwise write every frame to the temp folder

folder_paths.add_model_folder_path(MODELS_FOLDER, os.path.join(folder_paths.models_dir, MODELS_FOLDER), is_default=True)

PRIMARY_INPUTS: dict[str, tuple[str, str, str]] = {
    # input kind -> (input name, ComfyUI type, tooltip)
    INPUT_IMAGE: ("image", "IMAGE", "The photo (or video frames) to make control maps from. Any size; "
                  "the map comes back at the same size, aligned pixel for pixel."),
    INPUT_DEPTH: ("depth", "IMAGE", "A depth map, near = bright (e.g. from the Depth Anything V2 preprocessor)."),
    INPUT_LABELS: ("labels", "IMAGE", "A class-index map: each pixel's gray value × 255 is its ADE20K class."),
    INPUT_POSE: ("pose_keypoint", "POSE_KEYPOINT", "OpenPose keypoints (POSE_KEYPOINT), one frame per image."),
}
GENERIC_TYPES = [name for name, spec in REGISTRY.items() if spec.input_kind != INPUT_POSE]


def comfy_input(spec: ParamSpec) -> tuple:
    """A registry parameter as a ComfyUI input declaration (type, options with default/range/tooltip)."""
    if spec.kind == "bool":
        return ("BOOLEAN", {"default": spec.default, "tooltip": spec.help})
    if spec.kind == "choice":
        return (list(spec.choices), {"default": spec.default, "tooltip": spec.help})
    options = {"default": spec.default, "min": spec.minimum, "max": spec.maximum, "step": spec.step, "tooltip": spec.help}
    return ("INT" if spec.kind == "int" else "FLOAT", options)


def resolution_input(default: int) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": MAX_RESOLUTION, "step": 1,
                    "tooltip": "Detection short side in pixels, 64 or more (padded to a multiple of 64 inside); "
                               "0 detects at the input's own size. The map is returned at the input's own size "
                               "either way."})


MASK_INPUT = ("MASK", {"tooltip": "Pixels to repaint (1 = masked). Resized to the image if the sizes differ."})


def models_dir_for(spec: AnnotatorSpec) -> str:
    """The first annotator models folder that holds this annotator's main weight file.

    Raises MissingWeightsError naming the file and the folder to put it in when none does.
    """
    folders = list(folder_paths.get_folder_paths(MODELS_FOLDER))
    main_file = spec.weights[0]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, main_file.file_name)):
            return folder
    raise MissingWeightsError(main_file.file_name, folders[0], annotator=spec.display_name, source=main_file.source)


class AnnotatorModels(torch.nn.ModuleList):
    """The torch modules of one annotator as one model for the host ("Requested to load AnnotatorModels")."""


# One ModelPatcher per loaded detector, kept as long as the detector is (annotators caches it).
_PATCHERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def load_managed_detector(spec: AnnotatorSpec, folder: str) -> Any:
    """Load ``spec``'s detector (on the CPU, cached) and have the host place its torch modules.

    The modules go into a ModelPatcher (load device: the host's torch device; offload device: where
    it parks UNets) and through ``load_models_gpu``, so they count against the host's memory budget,
    move to the GPU for this run, and are offloaded by the host when another model needs the room.
    The detector then runs wherever its modules are.
    """
    detector = neural.detector_for(spec.alias_of or spec.name, folder)  # an alias runs its base's detector
    patcher = _PATCHERS.get(detector)
    if patcher is None:
        modules = AnnotatorModels(neural.torch_modules(detector))
        patcher = comfy.model_patcher.ModelPatcher(
            modules, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        _PATCHERS[detector] = patcher
    # Full load: these are plain torch modules, which cannot run with part of their weights elsewhere.
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    devices = {parameter.device for parameter in patcher.model.parameters()}
    if len(devices) > 1:  # a --novram host may still load partially: keep the run on one device
        patcher.model.to(patcher.load_device)
    return detector


def save_preview(maps: np.ndarray) -> list[dict]:
    """Write the first frames to ComfyUI's temp folder, as the host's PreviewImage does."""
    output_dir = folder_paths.get_temp_directory()
    prefix = KEY_PREFIX + "preview_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    height, width = maps.shape[1:3]
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir, width, height)
    results = []
    for index, frame in enumerate(maps[:PREVIEW_MAX_FRAMES]):
        pixels = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
        file = f"{filename.replace('%batch_num%', str(index))}_{counter:05}_.png"
        Image.fromarray(pixels).save(os.path.join(full_folder, file), compress_level=1)
        results.append({"filename": file, "subfolder": subfolder, "type": "temp"})
        counter += 1
    return results


def _to_numpy(primary: Any, input_kind: str) -> Any:
    if input_kind == INPUT_POSE:
        return primary
    return primary.detach().cpu().float().numpy()


def run_node(spec: AnnotatorSpec, primary: Any, *, resolution: int | None, mask: Any = None, **params: Any) -> dict:
    """Run ``spec`` over the batch with the host's progress bar; return the ui preview and the outputs."""
    inputs = _to_numpy(primary, spec.input_kind)
    total = len(inputs) if isinstance(inputs, (list, np.ndarray)) else 1
    progress = comfy.utils.ProgressBar(total)

    def on_progress(done: int, total_frames: int) -> None:
        progress.update_absolute(done, total_frames)
        comfy.model_management.throw_exception_if_processing_interrupted()

    extra: dict[str, Any] = {}
    if spec.weights:
        extra["models_dir"] = models_dir_for(spec)
        if (spec.alias_of or spec.name) in neural.DETECTORS:
            load_managed_detector(spec, extra["models_dir"])
            extra["device"] = None  # run where the host put the modules
        else:  # an annotator whose detector the node layer does not know how to hand to the host
            extra["device"] = comfy.model_management.get_torch_device()
    if spec.needs_mask:
        extra["mask"] = None if mask is None else mask.detach().cpu().float().numpy()
    result = run_annotator(
        spec.name, inputs, resolution=resolution if spec.uses_resolution else None,
        on_progress=on_progress, **extra, **params,
    )
    maps = result.as_float()
    image = torch.from_numpy(np.ascontiguousarray(maps))
    outputs: tuple = (image, result.pose_keypoints or []) if spec.outputs_pose or spec.input_kind == INPUT_POSE else (image,)
    return {"ui": {"images": save_preview(maps)}, "result": outputs}


class Preprocessor:
    """One node for every annotator: pick the type, set the resolution, defaults for the rest."""

    DESCRIPTION = (
        "Makes a ControlNet control map from an image with any annotator, using its default settings. "
        "Works offline; neural types read their weights from models/annotators. The map has the input's "
        "size, aligned pixel for pixel. POSE_KEYPOINT is filled for the pose types (openpose, openpose_face, "
        "openpose_full, dwpose), empty otherwise."
    )
    CATEGORY = CATEGORY
    FUNCTION = "preprocess"
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    RETURN_NAMES = ("control_map", "pose_keypoint")
    OUTPUT_TOOLTIPS = ("The control map, same size as the input.", "Pose keypoints (pose types only; else empty).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": PRIMARY_INPUTS[INPUT_IMAGE][2] + " For normal_from_depth give a "
                                    "depth map; for segmentation a label map."}),
                "preprocessor": (GENERIC_TYPES, {"default": "canny", "tooltip": "Which annotator to run (its defaults "
                                 "are used; its own node exposes the parameters)."}),
                "resolution": resolution_input(512),
            },
            "optional": {"mask": MASK_INPUT},
        }

    def preprocess(self, image: torch.Tensor, preprocessor: str, resolution: int, mask: Any = None) -> dict:
        spec = REGISTRY[preprocessor]
        returned = run_node(spec, image, resolution=resolution, mask=mask)
        control_map, *pose = returned["result"]
        returned["result"] = (control_map, pose[0] if pose else [])
        return returned


def node_class_name(spec: AnnotatorSpec) -> str:
    """``depth_leres++`` → ``DepthLeresPlusPlusPreprocessor``: letters and digits only, so the key is URL-safe."""
    return f"{spec.name.title().replace('_', '').replace('+', 'Plus')}Preprocessor"


def _dedicated_node(spec: AnnotatorSpec) -> type:
    """A node class exposing every parameter of ``spec``."""
    name, comfy_type, tooltip = PRIMARY_INPUTS[spec.input_kind]
    required: dict[str, tuple] = {name: (comfy_type, {"tooltip": tooltip})}
    if spec.needs_mask:
        required["mask"] = MASK_INPUT
    if spec.uses_resolution:
        required["resolution"] = resolution_input(spec.default_resolution)
    optional: dict[str, tuple] = {}
    for param in spec.params:
        (optional if param.added_later else required)[param.name] = comfy_input(param)
    with_pose = spec.outputs_pose or spec.input_kind == INPUT_POSE
    weights = f" Needs {', '.join(w.file_name for w in spec.weights)} in models/annotators." if spec.weights else ""
    if spec.requires:
        weights += f" Needs the Python package {', '.join(spec.requires)} (see the pack's annotators/README.md)."

    def preprocess(self: Any, **kwargs: Any) -> dict:
        primary = kwargs.pop(name)
        mask = kwargs.pop("mask", None)
        resolution = kwargs.pop("resolution", None)
        return run_node(spec, primary, resolution=resolution, mask=mask, **kwargs)

    return type(
        node_class_name(spec),
        (),
        {
            "DESCRIPTION": f"{spec.description} Output at the input's size, aligned pixel for pixel.{weights}",
            "CATEGORY": CATEGORY,
            "FUNCTION": "preprocess",
            "RETURN_TYPES": ("IMAGE", "POSE_KEYPOINT") if with_pose else ("IMAGE",),
            "RETURN_NAMES": ("control_map", "pose_keypoint") if with_pose else ("control_map",),
            "INPUT_TYPES": classmethod(lambda cls: {"required": dict(required), "optional": dict(optional)}),
            "preprocess": preprocess,
        },
    )


def display_name(spec: AnnotatorSpec) -> str:
    """``Canny edges Preprocessor (ControlNet Pack)``; the pose renderer is not a preprocessor."""
    base = spec.display_name if spec.input_kind == INPUT_POSE else f"{spec.display_name} Preprocessor"
    return base + PACK_LABEL


NODE_CLASS_MAPPINGS: dict[str, type] = {f"{KEY_PREFIX}Preprocessor": Preprocessor}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {f"{KEY_PREFIX}Preprocessor": "Preprocessor" + PACK_LABEL}
for _spec in REGISTRY.values():  # every annotator (Depth Anything V2 too); an alias (controlnet_aux's id) shares its base's node
    if _spec.alias_of is None:
        _key = KEY_PREFIX + node_class_name(_spec)
        NODE_CLASS_MAPPINGS[_key] = _dedicated_node(_spec)
        NODE_DISPLAY_NAME_MAPPINGS[_key] = display_name(_spec)
