"""Nodes that say how a control acts per block and over time: per-block weights, timestep keyframes
and strength curves. Their outputs feed the optional `weights` / `keyframes` inputs of
ApplyControlNet and of each MultiControlStack entry (controlnet_core weights.py and keyframes.py
hold the rules). Types are namespaced so they never wire into other packs' look-alike inputs.
"""
from __future__ import annotations

from ..controlnet_core.keyframes import CURVE_SHAPES, INTERPOLATIONS, Keyframe, KeyframeGroup, parse_curve_points, \
    strength_curve
from ..controlnet_core.weights import PRESET_CUSTOM, PRESET_UNIFORM, WEIGHT_PRESETS, ControlWeights, \
    parse_weight_values

KEY_PREFIX = "ControlNetPack_"
CATEGORY = "conditioning/controlnet pack/timing"
DISPLAY_SUFFIX = " (ControlNet Pack)"
WEIGHTS_TYPE = "CONTROLNET_PACK_WEIGHTS"
KEYFRAMES_TYPE = "CONTROLNET_PACK_KEYFRAMES"

# Optional inputs the apply nodes take (defined here, beside the nodes that feed them).
WEIGHTS_INPUT = (WEIGHTS_TYPE, {"tooltip": "Per-block weights from a Control Weights node (A1111 soft weights, "
                                           "guess mode, only the middle…), multiplied with the control mode's."})
KEYFRAMES_INPUT = (KEYFRAMES_TYPE, {"tooltip": "Strength (and optional mask and weights) over the schedule, from "
                                               "Timestep Keyframe or Strength Curve nodes. Inside start/end percent, "
                                               "everything multiplies with this node's own settings."})
FRAME_INDICES = ("STRING", {"default": "", "tooltip": "Sparse control for video batches: the latent frame of each "
                                                      "control image, e.g. '0, 8, 15' or '0-3, 12'. Frames not listed "
                                                      "get no control. Empty: every frame, as usual."})
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}


class ControlWeightsNode:
    DESCRIPTION = ("Per-block weights for one control entry: a preset users know (A1111's soft weights, diffusers' "
                   "guess mode, only the middle block, only the deepest skips, or custom values, one per block), a "
                   "multiplier on all of them, and a separate multiplier on the negative (uncond) side. A preset "
                   "that does not fit the control it meets (only the middle on an SD1.5 T2I-Adapter, say) fails "
                   "naming both.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (WEIGHTS_TYPE,)
    RETURN_NAMES = ("weights",)
    OUTPUT_TOOLTIPS = ("Connect to the weights input of Apply Control, of a Multi-Control Stack entry or of a "
                       "Timestep Keyframe.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "preset": (list(WEIGHT_PRESETS), {
                "default": PRESET_UNIFORM,
                "tooltip": "uniform: 1 everywhere. A1111 soft weights: ControlNet 0.825^(12−i) up to the middle "
                           "(T2I-Adapter 0.25, 0.62, 0.825, 1). diffusers guess mode: 0.1 … 1.0 log-spaced over a "
                           "ControlNet's residuals, positive side only. only the middle / only the deep skips: 1 "
                           "there, 0 elsewhere. custom: the values below."}),
            "multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                     "tooltip": "Multiplies every block's weight."}),
            "uncond_multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                            "tooltip": "Multiplies the control on the negative (uncond) side only; "
                                                       "0 = positive only."}),
        }, "optional": {
            "custom_values": ("STRING", {"default": "", "tooltip": "For preset custom: one number per block, "
                                                                  "comma-separated (ControlNet SD1.5: 12 skips then "
                                                                  "the middle; T2I-Adapter: 4 features)."}),
        }}

    def build(self, preset: str, multiplier: float, uncond_multiplier: float, custom_values: str = ""):
        values = parse_weight_values(custom_values or "") if preset == PRESET_CUSTOM else None
        return (ControlWeights(preset, float(multiplier), float(uncond_multiplier), values),)


class TimestepKeyframeNode:
    DESCRIPTION = ("One keyframe: from start_percent of the schedule on, the control's strength is multiplied by "
                   "this strength (and by the optional mask and weights), held or ramped to the next keyframe. "
                   "Chain keyframes through prev_keyframes, like conditioning.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (KEYFRAMES_TYPE,)
    RETURN_NAMES = ("keyframes",)
    OUTPUT_TOOLTIPS = ("The incoming keyframes plus this one (one at the same start is replaced).",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "start_percent": ("FLOAT", {"default": 0.0, **PERCENT,
                                        "tooltip": "Where this keyframe takes over (0 = first step)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Multiplier on the entry's strength from here on."}),
            "interpolation": (list(INTERPOLATIONS), {
                "default": "hold", "tooltip": "How the strength goes to the next keyframe's: hold (a step), linear, "
                                              "or ease (cosine ease-in-out)."}),
        }, "optional": {
            "prev_keyframes": (KEYFRAMES_TYPE, {"tooltip": "Keyframes to add this one to."}),
            "mask": ("MASK", {"tooltip": "Multiplied with the entry's mask from this keyframe on (held)."}),
            "weights": (WEIGHTS_TYPE, {"tooltip": "Multiplied with the entry's weights from this keyframe on."}),
        }}

    def build(self, start_percent: float, strength: float, interpolation: str, prev_keyframes=None, mask=None,
              weights=None):
        keyframe = Keyframe(start_percent, strength, mask=mask, weights=weights, interpolation=interpolation)
        return ((prev_keyframes or KeyframeGroup()).add(keyframe),)


class StrengthCurveNode:
    DESCRIPTION = ("A strength curve from a few points 'percent:strength'. The default fades the control out over "
                   "the last 40% of the steps. Before the first point the control keeps its own strength; after the "
                   "last, the last value holds.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (KEYFRAMES_TYPE,)
    RETURN_NAMES = ("keyframes",)
    OUTPUT_TOOLTIPS = ("Keyframes for the keyframes input of Apply Control or a Multi-Control Stack entry.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "points": ("STRING", {"default": "0.0:1.0, 0.6:1.0, 1.0:0.0",
                                  "tooltip": "percent:strength pairs, comma-separated; strengths multiply the "
                                             "entry's."}),
            "shape": (list(CURVE_SHAPES), {"default": "linear", "tooltip": "linear, ease (cosine) or constant "
                                                                           "(steps) between points."}),
        }, "optional": {
            "prev_keyframes": (KEYFRAMES_TYPE, {"tooltip": "Keyframes to merge the curve's points into."}),
        }}

    def build(self, points: str, shape: str, prev_keyframes=None):
        curve = strength_curve(parse_curve_points(points), shape)
        return ((prev_keyframes or KeyframeGroup()).merged(curve),)


NODE_CLASS_MAPPINGS = {
    f"{KEY_PREFIX}ControlWeights": ControlWeightsNode,
    f"{KEY_PREFIX}TimestepKeyframe": TimestepKeyframeNode,
    f"{KEY_PREFIX}StrengthCurve": StrengthCurveNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    f"{KEY_PREFIX}ControlWeights": "Control Weights" + DISPLAY_SUFFIX,
    f"{KEY_PREFIX}TimestepKeyframe": "Timestep Keyframe" + DISPLAY_SUFFIX,
    f"{KEY_PREFIX}StrengthCurve": "Strength Curve" + DISPLAY_SUFFIX,
}
