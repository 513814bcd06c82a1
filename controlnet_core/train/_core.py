"""What training uses from the rest of controlnet_core, imported in this one place: where the core's
modules move, only these lines change."""
from ..checkpoint_io import read_state_dict, read_tensor_shapes
from ..controlnet import ControlNetConfig, ControlNetModel, from_unet
from ..controlnet.formats import infer_config
from ..controlnet.formats.layouts import UNET_ENCODER_PREFIXES
from ..errors import CheckpointError, ControlNetError, InputError
from ..ldm.blocks import timestep_embedding

__all__ = ["CheckpointError", "ControlNetConfig", "ControlNetError", "ControlNetModel", "InputError", "UNET_ENCODER_PREFIXES",
           "from_unet", "infer_config", "read_state_dict", "read_tensor_shapes", "timestep_embedding"]
