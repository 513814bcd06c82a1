"""ComfyUI nodes: LoadControlNet, ApplyControlNet, MultiControlStack, for every control system the
pack runs (ControlNet, T2I-Adapter, ControlNeXt, Control-LoRA, LLLite), mixed freely in one stack.

A thin layer: ComfyUI types in, controlnet_core entries out (see control_object.PackControl).

The node interface (class keys, input names and order, types) is a public contract: shared
workflow JSON files store inputs by name and widget values by position. tests/test_node_interface.py
snapshots it. To change it deliberately, only ADD optional inputs at the end, never rename a combo
value, and update the snapshot in the same commit.
"""
from __future__ import annotations

import os

import comfy.utils
import folder_paths

from ..controlnet_core import InputError, identify
from ..controlnet_core.context import parse_frame_indices
from ..controlnet_core.errors import BaseModelRequired
from ..controlnet_core.fast import SPEED_MODES
from ..controlnet_core.hint import RESIZE_MODES
from ..controlnet_core.modes import CONTROL_MODES, MODE_BALANCED
from .control_object import (LoadedControl, PackControl, base_unet_weights, from_host_controlnet, host_union_type,
                             load_file)
from .control_units import ControlUnit
from .timing_nodes import FRAME_INDICES, KEYFRAMES_INPUT, WEIGHTS_INPUT

KEY_PREFIX = "ControlNetPack_"
CATEGORY = "conditioning/controlnet pack"
STACK_TYPE = "CONTROLNET_PACK_STACK"  # namespaced: a bare CONTROL_STACK would wire into other packs' nodes
STACK_SLOTS = 3
MODELS_FOLDER = "controlnet"

NO_COMPANION = "none"
COMPANION_KINDS = {"auto": "auto", "deltas": "delta", "full values": "full"}
# Shuffle ControlNets' global average pooling: by a diffusers config.json or the file name (the host's rule), or forced.
POOLING_CHOICES = {"auto": None, "on": True, "off": False}

STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                      "tooltip": "Multiplier on what this control adds (ControlNet residuals, T2I-Adapter features, "
                                 "the ControlNeXt feature). 0 turns it off; 1 is the trained strength."})
START = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                   "tooltip": "Fraction of the sampling schedule where the control starts (0 = first step). "
                              "Same sigma semantics as the host's Apply ControlNet."})
END = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                 "tooltip": "Fraction of the sampling schedule where the control stops (1 = last step)."})
MODE = (list(CONTROL_MODES), {"default": MODE_BALANCED,
                              "tooltip": "balanced: control on positive and negative. "
                                         "prompt is more important: A1111's soft weights, on both (ControlNet: the "
                                         "shallowest skip 0.825^12 rising to the middle, 1.0 on SD1.x, 0.825^3 on SDXL; "
                                         "T2I-Adapter: its features ×0.25, 0.62, 0.825, 1; not for ControlNeXt). "
                                         "ControlNet is more important: the same soft weights, positive only."})
RESIZE = (list(RESIZE_MODES), {"default": "crop_and_resize",
                               "tooltip": "How the control image is fitted to the generation: crop_and_resize "
                                          "(centre crop, the host's), just_resize (stretch) or resize_and_fill "
                                          "(letterbox with the edge colour)."})
SPEED = (list(SPEED_MODES), {"default": "exact",
                             "tooltip": "exact: the control is computed at every step (the reference result). The fast "
                                        "modes are not exact: they compute it at one step and reuse it at the next "
                                        "ones, every 2 or 3 steps, or adaptive (again once the timestep moved 150 of "
                                        "1000), for about 2-3× less control time at a small quality cost (see the "
                                        "README's fast-mode table)."})
MASK_TOOLTIP = ("Optional MASK, same width and height as the control image: the control acts only where "
                "the mask is 1 (soft values blend).")
IMAGE_TOOLTIP = ("Control image (pose skeleton, depth map, edges…), values 0–1. Resized to the latent size ×8 "
                 "(see resize_mode). Batch 1 applies to every latent; N frames pair with N latents (more frames: the "
                 "first ones; a divisor of the latent batch repeats in turn).")
CONTROL_NET_TOOLTIP = ("A ControlNet, T2I-Adapter, ControlNeXt, Control-LoRA or LLLite from LoadControlNet, or a "
                       "CONTROL_NET from the host's own Load ControlNet Model node.")


def controlnet_folders() -> list[str]:
    return list(folder_paths.get_folder_paths(MODELS_FOLDER))


def resolve_controlnet_path(name: str) -> str:
    """The full path of `name`, found only through ComfyUI's folder_paths (names come from shared files)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"control_net_name: expected a file name from the {MODELS_FOLDER} folder, found {name!r}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts:
        raise InputError(
            f"control_net_name {name!r} points outside ComfyUI's {MODELS_FOLDER} folder; a workflow may only name "
            f"files inside {controlnet_folders()}")
    path = folder_paths.get_full_path(MODELS_FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"ControlNet file {name!r} was not found in ComfyUI's {MODELS_FOLDER} folder(s) {controlnet_folders()}. "
            f"Put the file there (or in a path listed in extra_model_paths.yaml) and refresh the node list.")
    return path


def as_unit(control_net, image, strength: float, start: float, end: float, mask, mode: str, label: str,
            resize_mode: str = "crop_and_resize", speed_mode: str = "exact", weights=None, keyframes=None,
            frame_indices: str = "") -> ControlUnit:
    """One stack entry from node inputs; a host CONTROL_NET is run through our core when it can be."""
    indices = parse_frame_indices(frame_indices or "")
    if isinstance(control_net, PackControl):
        if control_net.source is None:
            raise InputError(f"{label}: this CONTROL_NET already carries applied controls; connect the loader's "
                             "output instead")
        net = control_net.typed_source()  # a Union type set by the host's SetUnionControlNetType
        _check_timing_fits(net, weights, keyframes, label)
    else:
        net = host_union_type(control_net, from_host_controlnet(control_net))
        if net is None:
            if not hasattr(control_net, "set_cond_hint"):
                raise InputError(f"{label}: control_net must be a CONTROL_NET, found {type(control_net).__name__}")
            if mask is not None or mode != MODE_BALANCED or resize_mode != "crop_and_resize" or speed_mode != "exact":
                raise InputError(
                    f"{label}: this {type(control_net).__name__} runs on the host's own code path, which has no "
                    "mask, control mode or resize mode, and no fast mode; use mode 'balanced', crop_and_resize, "
                    "speed_mode 'exact' and no mask, or load the file with LoadControlNet")
            if weights is not None or keyframes is not None or indices is not None:
                raise InputError(
                    f"{label}: this {type(control_net).__name__} runs on the host's own code path, which has no "
                    "per-block weights, keyframes or sparse frames; disconnect them, or load the file with "
                    "LoadControlNet")
            net = control_net
        else:
            _check_timing_fits(net, weights, keyframes, label)
    return ControlUnit(net=net, image=image, strength=float(strength), start=float(start), end=float(end),
                       mask=mask, mode=mode, label=label, resize_mode=resize_mode, speed_mode=speed_mode,
                       weights=weights, keyframes=keyframes, frame_indices=indices)


def _check_timing_fits(net: LoadedControl, weights, keyframes, label: str) -> None:
    """Refuse weights (on the entry or a keyframe) that do not fit the control now, not mid-run."""
    try:
        if weights is not None:
            weights.resolve(net.model)
        if keyframes is not None:
            keyframes.resolve(net.model)
    except InputError as error:
        raise InputError(f"{label}: {error}") from None


def apply_units(positive: list, negative: list, units: list[ControlUnit]) -> tuple[list, list]:
    """Put `units` on every entry of positive and negative, on top of whatever control is there.

    Entries that had the same previous control get the very same new object (host behaviour), so
    cond and uncond are batched into one ControlNet call. Our units become one PackControl
    (merged into a PackControl already on the conditioning, so a chain of our nodes still runs as
    one stack); host-only objects are chained as the host's own apply node would.
    """
    units = [unit for unit in units if unit.strength != 0.0]
    if not units:
        return positive, negative
    _refuse_reapplied(units, positive + negative)
    ours = [unit for unit in units if isinstance(unit.net, LoadedControl)]
    foreign = [unit for unit in units if not isinstance(unit.net, LoadedControl)]
    built: dict = {}

    def chain_onto(previous):
        control = previous
        for unit in foreign:
            host_control = unit.net.copy().set_cond_hint(unit.image.movedim(-1, 1), unit.strength,
                                                          (unit.start, unit.end))
            host_control.set_previous_controlnet(control)
            control = host_control
        if ours:
            if type(control) is PackControl:
                control = control.with_units(ours)
            else:
                pack = PackControl(ours)
                pack.set_previous_controlnet(control)
                control = pack
        return control

    def attach(conditioning: list) -> list:
        result = []
        for tensor, meta in conditioning:
            meta = meta.copy()
            previous = meta.get("control")
            if previous not in built:
                built[previous] = chain_onto(previous)
            meta["control"] = built[previous]
            meta["control_apply_to_uncond"] = False
            result.append([tensor, meta])
        return result

    return attach(positive), attach(negative)


def _refuse_reapplied(units: list[ControlUnit], conditioning: list) -> None:
    """An entry must never be applied twice: refuse units that the conditioning already carries
    (the usual cause: a MultiControlStack fed both another stack node's conditioning and its stack)."""
    applied = []
    for _, meta in conditioning:
        control = meta.get("control")
        while control is not None:
            if isinstance(control, PackControl):
                applied += control.units
            control = getattr(control, "previous_controlnet", None)
    again = [unit for unit in units if any(unit is other for other in applied)]
    if again:
        labels = ", ".join(unit.label or unit.net.name for unit in again)
        raise InputError(
            f"{labels} would be applied twice: the conditioning already carries {'it' if len(again) == 1 else 'them'} "
            "(it comes from the node that built this stack). Connect that node's stack output or its positive/"
            "negative outputs to this node, not both.")


class LoadControlNet:
    DESCRIPTION = ("Loads a control model from ComfyUI's controlnet models folder: a ControlNet (SD1.x, SD2.x, SDXL; "
                   "original or diffusers layout; shuffle ControlNets pooled as the original; diff ControlNets with "
                   "the base model on the optional `model` input), a T2I-Adapter (full, XL or light), a ControlNeXt "
                   "module (with its UNet weights as the optional second file), a Union ControlNet (xinsir, 6 types "
                   "or ProMax; pick each entry's type with the host's SetUnionControlNetType node, and entries of one "
                   "Union file run in one pass), a Control-LoRA (built at each run from the sampled model's UNet, "
                   "LoRAs included) or a ControlNet-LLLite file. The output is a standard CONTROL_NET: it works with "
                   "this pack's apply nodes and with the host's own Apply ControlNet. Files the pack does not run "
                   "(style adapters, SD3/Flux ControlNets) get an error naming the node to use instead. Loading the "
                   "same file twice reuses the weights.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The loaded control, stored in the dtype the host picks for this device.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = folder_paths.get_filename_list(MODELS_FOLDER)
        return {"required": {
            "control_net_name": (files, {"tooltip": "A file in ComfyUI's models/controlnet folder (or a path from "
                                                    "extra_model_paths.yaml)."}),
        }, "optional": {
            "unet_weights": ([NO_COMPANION] + list(files), {
                "default": NO_COMPANION,
                "tooltip": "ControlNeXt only: the UNet weights that ship beside the module (unet.safetensors, "
                           "unet_weight_increasements.safetensors). They are applied to the model while this control "
                           "is on the conditioning, and removed afterwards. Leave at 'none' for other files."}),
            "unet_weights_kind": (list(COMPANION_KINDS), {
                "default": "auto",
                "tooltip": "Whether the ControlNeXt UNet weights are deltas (added to the model's) or full values "
                           "(replacing them). auto reads the file name, then the weights' magnitudes."}),
            # Added later: optional inputs keep old workflows loading.
            "global_average_pooling": (list(POOLING_CHOICES), {
                "default": "auto",
                "tooltip": "Shuffle ControlNets (control_v11e_sd15_shuffle): every residual is averaged over the "
                           "image and the control acts on the positive prompt only, as the original does. auto: as the "
                           "config.json beside a diffusers file (diffusion_pytorch_model*.safetensors) says, else on "
                           "when the file name ends in _shuffle or _shuffle_fp16 (the host's rule); on/off force it. "
                           "ControlNets only."}),
            "model": ("MODEL", {
                "tooltip": "diff ControlNets only (diff_control_sd15_*, TemporalNet): the base model whose UNet "
                           "weights the file's differences are added to, read as the host's DiffControlNetLoader "
                           "reads them (with the LoRAs applied to this MODEL). Ignored for other files."}),
        }}

    def load(self, control_net_name: str, unet_weights: str = NO_COMPANION, unet_weights_kind: str = "auto",
             global_average_pooling: str = "auto", model=None):
        path = resolve_controlnet_path(control_net_name)
        companion = None if unet_weights in (None, "", NO_COMPANION) else resolve_controlnet_path(unet_weights)
        if unet_weights_kind not in COMPANION_KINDS:
            raise InputError(f"unet_weights_kind: expected one of {list(COMPANION_KINDS)}, found {unet_weights_kind!r}")
        if global_average_pooling not in POOLING_CHOICES:
            raise InputError(f"global_average_pooling: expected one of {list(POOLING_CHOICES)}, "
                             f"found {global_average_pooling!r}")
        base_unet = None
        if model is not None and identify(path).needs_base_model:
            base_unet = base_unet_weights(model)
        progress = comfy.utils.ProgressBar(2)
        try:
            loaded = load_file(path, control_net_name, companion, COMPANION_KINDS[unet_weights_kind],
                               progress=progress.update, global_average_pooling=POOLING_CHOICES[global_average_pooling],
                               base_unet=base_unet)
        except BaseModelRequired as error:
            raise InputError(f"{control_net_name} is a 'diff' ControlNet: its weights are differences from a base "
                             "model's UNet. Connect that model (the checkpoint you sample with, e.g. SD1.5) to this "
                             "node's `model` input.") from error
        progress.update_absolute(2)
        return (PackControl(source=loaded),)


class ApplyControlNet:
    DESCRIPTION = ("Applies one ControlNet to positive and negative conditioning. Controls already on the "
                   "conditioning (the host's or other packs') keep working and are summed. Accepts CONTROL_NET "
                   "from this pack's loader or the host's.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the control added.", "Negative conditioning with the control added.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning (from CLIP Text Encode)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (from CLIP Text Encode)."}),
                "control_net": ("CONTROL_NET", {"tooltip": CONTROL_NET_TOOLTIP}),
                "image": ("IMAGE", {"tooltip": IMAGE_TOOLTIP}),
                "strength": STRENGTH,
                "start_percent": START,
                "end_percent": END,
            },
            "optional": {
                "mask": ("MASK", {"tooltip": MASK_TOOLTIP}),
                "control_mode": MODE,
                "resize_mode": RESIZE,
                "speed_mode": SPEED,
                "weights": WEIGHTS_INPUT,
                "keyframes": KEYFRAMES_INPUT,
                "frame_indices": FRAME_INDICES,
            },
        }

    def apply(self, positive, negative, control_net, image, strength, start_percent, end_percent,
              mask=None, control_mode=MODE_BALANCED, resize_mode="crop_and_resize", speed_mode="exact", weights=None,
              keyframes=None, frame_indices=""):
        unit = as_unit(control_net, image, strength, start_percent, end_percent, mask, control_mode, "ApplyControlNet",
                       resize_mode, speed_mode, weights, keyframes, frame_indices)
        return apply_units(positive, negative, [unit])


class MultiControlStack:
    DESCRIPTION = (f"Builds a stack of up to {STACK_SLOTS} ControlNet entries (plus any stack wired in) and applies "
                   "the whole stack to positive and negative in one step. Each entry has its own strength, step "
                   "range, control mode, optional mask and an on/off switch. For pose + depth: OpenPose net and "
                   "pose image in entry 1, depth net and depth map in entry 2. The stack output continues in "
                   "another MultiControlStack (wire its stack input, add entries there).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", STACK_TYPE)
    RETURN_NAMES = ("positive", "negative", "stack")
    OUTPUT_TOOLTIPS = ("Positive with the whole stack applied (empty if positive is not connected).",
                       "Negative with the whole stack applied (empty if negative is not connected).",
                       "The incoming stack plus this node's enabled entries, for another MultiControlStack.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        required = {}
        optional = {
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning. Leave unconnected to only build a stack."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning. Leave unconnected to only build a stack."}),
            "stack": (STACK_TYPE, {"tooltip": "Entries from another MultiControlStack; applied together with this "
                                              "node's entries."}),
        }
        for slot in range(1, STACK_SLOTS + 1):
            required[f"enabled_{slot}"] = ("BOOLEAN", {"default": True, "label_on": "on", "label_off": "off",
                                                       "tooltip": f"Entry {slot} on or off, without rewiring."})
            required[f"strength_{slot}"] = STRENGTH
            required[f"start_percent_{slot}"] = START
            required[f"end_percent_{slot}"] = END
            required[f"control_mode_{slot}"] = MODE
            optional[f"control_net_{slot}"] = ("CONTROL_NET", {"tooltip": f"Entry {slot}: {CONTROL_NET_TOOLTIP}"})
            optional[f"image_{slot}"] = ("IMAGE", {"tooltip": f"Entry {slot}: {IMAGE_TOOLTIP}"})
            optional[f"mask_{slot}"] = ("MASK", {"tooltip": f"Entry {slot}: {MASK_TOOLTIP}"})
        for slot in range(1, STACK_SLOTS + 1):  # added later: optional inputs keep old workflows loading
            optional[f"resize_mode_{slot}"] = RESIZE
        for slot in range(1, STACK_SLOTS + 1):
            optional[f"speed_mode_{slot}"] = SPEED
        for slot in range(1, STACK_SLOTS + 1):
            optional[f"weights_{slot}"] = WEIGHTS_INPUT
            optional[f"keyframes_{slot}"] = KEYFRAMES_INPUT
            optional[f"frame_indices_{slot}"] = FRAME_INDICES
        return {"required": required, "optional": optional}

    def apply(self, positive=None, negative=None, stack=None, **slots):
        units = list(stack or ())
        for slot in range(1, STACK_SLOTS + 1):
            if not slots.get(f"enabled_{slot}", True):
                continue
            control_net, image = slots.get(f"control_net_{slot}"), slots.get(f"image_{slot}")
            if control_net is None and image is None:
                continue  # empty slot
            label = f"MultiControlStack entry {slot}"
            if control_net is None or image is None:
                missing = "control_net" if control_net is None else "image"
                raise InputError(f"{label}: {missing}_{slot} is not connected; connect it or switch the entry off")
            units.append(as_unit(control_net, image, slots.get(f"strength_{slot}", 1.0),
                                 slots.get(f"start_percent_{slot}", 0.0), slots.get(f"end_percent_{slot}", 1.0),
                                 slots.get(f"mask_{slot}"), slots.get(f"control_mode_{slot}", MODE_BALANCED), label,
                                 slots.get(f"resize_mode_{slot}", "crop_and_resize"),
                                 slots.get(f"speed_mode_{slot}", "exact"), slots.get(f"weights_{slot}"),
                                 slots.get(f"keyframes_{slot}"), slots.get(f"frame_indices_{slot}", "")))
        out_positive, out_negative = apply_units(positive or [], negative or [], units)
        return (out_positive, out_negative, tuple(units))


NODE_CLASS_MAPPINGS = {
    f"{KEY_PREFIX}LoadControlNet": LoadControlNet,
    f"{KEY_PREFIX}ApplyControlNet": ApplyControlNet,
    f"{KEY_PREFIX}MultiControlStack": MultiControlStack,
}
# Display names differ from the host's "Load ControlNet Model" / "Apply ControlNet" in the node search;
# the class keys above are the saved-workflow contract and never change.
DISPLAY_SUFFIX = " (ControlNet Pack)"  # the preprocessor nodes end the same way
NODE_DISPLAY_NAME_MAPPINGS = {
    f"{KEY_PREFIX}LoadControlNet": "Load Control Model" + DISPLAY_SUFFIX,
    f"{KEY_PREFIX}ApplyControlNet": "Apply Control" + DISPLAY_SUFFIX,
    f"{KEY_PREFIX}MultiControlStack": "Multi-Control Stack" + DISPLAY_SUFFIX,
}
