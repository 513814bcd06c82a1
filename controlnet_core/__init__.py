"""controlnet_core: a pure-PyTorch engine for the control systems of ldm-style UNets (SD1.x, SD2.x, SDXL):
ControlNet, T2I-Adapter, ControlNeXt, Union ControlNets, Control-LoRA and LLLite in one stack.

Never imports ComfyUI. See load_control / identify (systems.py), the protocol every loaded control
implements (protocol.py) and ControlStack (stack.py).
"""
from .control_lora import ControlLoraModel, load_control_lora
from .context import FrameWindow
from .controlnet import ControlNetConfig, ControlNetModel, Residuals, from_unet, load_controlnet
from .controlnext import ControlNeXtModel, load_controlnext
from .errors import CheckpointError, ControlNetError, InputError
from .hint import prepare_hint, prepare_mask
from .identity import Identity
from .lllite import LLLiteModel, load_lllite
from .keyframes import Keyframe, KeyframeGroup, strength_curve
from .modes import CONTROL_MODES, MODE_BALANCED, MODE_CONTROLNET, MODE_PROMPT
from .protocol import Contribution, ControlModel, Target, UNetLayout
from .stack import ControlEntry, ControlStack
from .systems import SYSTEMS, identify, load_control
from .t2i_adapter import T2IAdapterModel, load_t2i_adapter
from .union import UnionControl, load_union
from .weights import ControlWeights

__all__ = [
    "CONTROL_MODES", "CheckpointError", "Contribution", "ControlEntry", "ControlLoraModel", "ControlModel",
    "ControlNeXtModel", "LLLiteModel", "load_control_lora", "load_lllite",
    "ControlNetConfig", "ControlNetError", "ControlNetModel", "ControlStack", "Identity", "InputError",
    "MODE_BALANCED", "MODE_CONTROLNET", "MODE_PROMPT", "Residuals", "SYSTEMS", "T2IAdapterModel", "Target",
    "UNetLayout", "from_unet", "identify", "load_control", "load_controlnet", "load_controlnext", "load_t2i_adapter",
    "prepare_hint", "prepare_mask", "UnionControl", "load_union",
    # control over time and space (weights.py, keyframes.py, context.py)
    "ControlWeights", "FrameWindow", "Keyframe", "KeyframeGroup", "strength_curve",
]
