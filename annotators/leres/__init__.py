"""LeReS depth (``res101.pth``) and LeReS++ boosting with the pix2pix merge network (``latest_net_G.pth``)."""
from .boost import boosted_depth, max_pool_blocks, processing_resolution, select_patches
from .checkpoint import MERGE_WEIGHT_FILE, WEIGHT_FILE, config_from_state_dict, load_leres, load_merge_unet
from .detector import LeresDetector, depth_to_map, network_input
from .model import LeresConfig, LeresModel, MergeConfig, MergeUNet

__all__ = [
    "LeresConfig",
    "LeresDetector",
    "LeresModel",
    "MERGE_WEIGHT_FILE",
    "MergeConfig",
    "MergeUNet",
    "WEIGHT_FILE",
    "boosted_depth",
    "config_from_state_dict",
    "depth_to_map",
    "load_leres",
    "load_merge_unet",
    "max_pool_blocks",
    "network_input",
    "processing_resolution",
    "select_patches",
]
