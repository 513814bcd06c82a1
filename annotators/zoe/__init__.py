"""ZoeDepth (ZoeD_N, ``ZoeD_M12_N.pt``): MiDaS DPT-BEiT-L with the metric-bins head."""
from .checkpoint import WEIGHT_FILE, config_from_state_dict, load_zoe
from .detector import ZoeDetector, depth_to_map
from .model import ZoeConfig, ZoeDepthModel, relative_position_index

__all__ = [
    "WEIGHT_FILE",
    "ZoeConfig",
    "ZoeDepthModel",
    "ZoeDetector",
    "config_from_state_dict",
    "depth_to_map",
    "load_zoe",
    "relative_position_index",
]
