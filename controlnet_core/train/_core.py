"""What training uses from the rest of controlnet_core, imported in this one place: where the core's
modules move, only these lines change."""
from ..checkpoint_io import read_state_dict, read_tensor_shapes
from ..config import ControlNetConfig
from ..errors import CheckpointError, ControlNetError, InputError
from ..formats import infer_config
from ..formats.layouts import UNET_ENCODER_PREFIXES
from ..loader import from_unet
from ..models.blocks import timestep_embedding
from ..models.controlnet import ControlNetModel

__all__ = ["CheckpointError", "ControlNetConfig", "ControlNetError", "ControlNetModel", "InputError", "UNET_ENCODER_PREFIXES",
           "from_unet", "infer_config", "read_state_dict", "read_tensor_shapes", "timestep_embedding"]
