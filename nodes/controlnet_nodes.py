"""ComfyUI nodes: LoadControlNet, ApplyControlNet, MultiControlStack.

A thin layer: ComfyUI types in, controlnet_core entries out (see control_object.PackControl).

The node interface (class keys, input names and order, types) is a public contract: shared
workflow JSON files store inputs by name and widget values by position. tests/test_node_interface.py
snapshots it. To change it deliberately, only ADD optional inputs at the end, keep old combo values
working (control_units.MODE_ALIASES), and update the snapshot in the same commit.
"""
from __future__ import annotations

import os

import comfy.utils
import folder_paths

from ..controlnet_core import InputError
from .control_object import LoadedControlNet, PackControl, from_host_controlnet, load_file
from .control_units import CONTROL_MODES, MODE_BALANCED, ControlUnit

KEY_PREFIX = "ControlNetPack_"
CATEGORY = "conditioning/controlnet pack"
STACK_TYPE = "CONTROLNET_PACK_STACK"  # namespaced: a bare CONTROL_STACK would wire into other packs' nodes
STACK_SLOTS = 3
MODELS_FOLDER = "controlnet"

STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                      "tooltip": "Multiplier on this ControlNet's residuals. 0 turns it off; 1 is the trained strength."})
START = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                   "tooltip": "Fraction of the sampling schedule where the control starts (0 = first step). "
                              "Same sigma semantics as the host's Apply ControlNet."})
END = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                 "tooltip": "Fraction of the sampling schedule where the control stops (1 = last step)."})
MODE = (list(CONTROL_MODES), {"default": MODE_BALANCED,
                              "tooltip": "balanced: control on positive and negative. "
                                         "prompt is more important: residual i of 13 scaled by 0.825^(12−i) "
                                         "(middle 1.0 … shallowest 0.10), on both. "
                                         "ControlNet is more important: the same soft weights, positive only."})
MASK_TOOLTIP = ("Optional MASK, same width and height as the control image: the control acts only where "
                "the mask is 1 (soft values blend).")
IMAGE_TOOLTIP = ("Control image (pose skeleton, depth map, edges…), values 0–1. Resized to the latent size ×8 "
                 "with the host's centre crop. Batch 1 applies to every latent; otherwise one per latent.")
CONTROL_NET_TOOLTIP = "A ControlNet from LoadControlNet or from the host's own Load ControlNet Model node."


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


def as_unit(control_net, image, strength: float, start: float, end: float, mask, mode: str, label: str) -> ControlUnit:
    """One stack entry from node inputs; a host CONTROL_NET is run through our core when it can be."""
    if isinstance(control_net, PackControl):
        if control_net.source is None:
            raise InputError(f"{label}: this CONTROL_NET already carries applied controls; connect the loader's "
                             "output instead")
        net = control_net.source
    else:
        net = from_host_controlnet(control_net)
        if net is None:
            if not hasattr(control_net, "set_cond_hint"):
                raise InputError(f"{label}: control_net must be a CONTROL_NET, found {type(control_net).__name__}")
            if mask is not None or mode != MODE_BALANCED:
                raise InputError(
                    f"{label}: this {type(control_net).__name__} runs on the host's own code path, which has no "
                    "mask or control mode; use mode 'balanced' and no mask, or load a ControlNet with LoadControlNet")
            net = control_net
    return ControlUnit(net=net, image=image, strength=float(strength), start=float(start), end=float(end),
                       mask=mask, mode=mode, label=label)


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
    ours = [unit for unit in units if isinstance(unit.net, LoadedControlNet)]
    foreign = [unit for unit in units if not isinstance(unit.net, LoadedControlNet)]
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


class LoadControlNet:
    DESCRIPTION = ("Loads a ControlNet (SD1.x, SD2.x, SDXL; .safetensors, ldm or diffusers layout) from ComfyUI's "
                   "controlnet models folder. The output is a standard CONTROL_NET: it works with this pack's "
                   "apply nodes and with the host's own Apply ControlNet. Loading the same file twice reuses "
                   "the weights.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The loaded ControlNet, in the dtype the host picks for this device.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "control_net_name": (folder_paths.get_filename_list(MODELS_FOLDER),
                                 {"tooltip": "A file in ComfyUI's models/controlnet folder (or a path from "
                                             "extra_model_paths.yaml)."}),
        }}

    def load(self, control_net_name: str):
        path = resolve_controlnet_path(control_net_name)
        progress = comfy.utils.ProgressBar(2)
        loaded = load_file(path, control_net_name, progress=progress.update)
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
            },
        }

    def apply(self, positive, negative, control_net, image, strength, start_percent, end_percent,
              mask=None, control_mode=MODE_BALANCED):
        unit = as_unit(control_net, image, strength, start_percent, end_percent, mask, control_mode, "ApplyControlNet")
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
                                 slots.get(f"mask_{slot}"), slots.get(f"control_mode_{slot}", MODE_BALANCED), label))
        out_positive, out_negative = apply_units(positive or [], negative or [], units)
        return (out_positive, out_negative, tuple(units))


NODE_CLASS_MAPPINGS = {
    f"{KEY_PREFIX}LoadControlNet": LoadControlNet,
    f"{KEY_PREFIX}ApplyControlNet": ApplyControlNet,
    f"{KEY_PREFIX}MultiControlStack": MultiControlStack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    f"{KEY_PREFIX}LoadControlNet": "LoadControlNet",
    f"{KEY_PREFIX}ApplyControlNet": "ApplyControlNet",
    f"{KEY_PREFIX}MultiControlStack": "MultiControlStack",
}
