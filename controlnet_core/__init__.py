"""controlnet_core: a pure-PyTorch ControlNet engine for ldm-style UNets (SD1.x, SD2.x, SDXL).

Never imports ComfyUI. See load_controlnet, ControlNetModel.forward and ControlStack.
"""
from .controlnet.config import ControlNetConfig
from .errors import CheckpointError, ControlNetError, InputError
from .hint import prepare_hint, prepare_mask
from .controlnet.loader import describe, from_unet, load_controlnet
from .controlnet.model import ControlNetModel, Residuals
from .stack import ControlEntry, ControlStack

__all__ = [
    "CheckpointError", "ControlEntry", "ControlNetConfig", "ControlNetError", "ControlNetModel", "ControlStack",
    "InputError", "Residuals", "describe", "from_unet", "load_controlnet", "prepare_hint", "prepare_mask",
]
