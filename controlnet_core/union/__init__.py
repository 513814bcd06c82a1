"""Union ControlNet (xinsir ControlNet++, 6 types; ProMax, 8 types): one SDXL ControlNet for every
control type, several conditions fused into one forward."""
from .control import UnionControl
from .control_types import CONTROL_TYPES, TYPE_NAMES, control_type_id
from .loader import detect, load_union
from .model import UnionConfig, UnionControlNetModel

__all__ = ["CONTROL_TYPES", "TYPE_NAMES", "UnionConfig", "UnionControl", "UnionControlNetModel", "control_type_id",
           "detect", "load_union"]
