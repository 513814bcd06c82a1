"""Checkpoint layouts and the tables that convert them to the original (ldm) key names."""
from .infer import infer_config
from .layouts import (LayoutInfo, apply_difference, detect_layout, is_controlnet, strip_to_control_keys,
                      unet_encoder_from_checkpoint)

__all__ = ["LayoutInfo", "apply_difference", "detect_layout", "infer_config", "is_controlnet", "strip_to_control_keys",
           "unet_encoder_from_checkpoint"]
