"""What training uses from the rest of controlnet_core, imported in this one place: where the core's
modules move, only these lines change."""
from ..checkpoint_io import read_state_dict, read_tensor_shapes
from ..controlnet import ControlNetConfig, ControlNetModel, from_unet
from ..controlnet.formats import infer_config
from ..controlnet.formats.layouts import UNET_ENCODER_PREFIXES
from ..controlnext import ControlNeXtModel
from ..controlnext.config import MODULE_A_CONFIG, SD15, SDXL, VARIANT_FAMILIES, ControlNeXtConfig
from ..errors import CheckpointError, ControlNetError, InputError
from ..ldm.blocks import timestep_embedding
from ..protocol import STREAM, Addition, UNetCall

__all__ = ["MODULE_A_CONFIG", "SD15", "SDXL", "STREAM", "VARIANT_FAMILIES", "Addition", "CheckpointError",
           "ControlNeXtConfig", "ControlNeXtModel", "ControlNetConfig", "ControlNetError", "ControlNetModel", "InputError",
           "UNET_ENCODER_PREFIXES", "UNetCall", "from_unet", "infer_config", "read_state_dict", "read_tensor_shapes",
           "timestep_embedding"]
