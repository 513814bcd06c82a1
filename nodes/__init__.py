"""ComfyUI node classes: the only part of the pack that imports the host."""
from __future__ import annotations

from .controlnet_nodes import NODE_CLASS_MAPPINGS as _CONTROLNET_CLASSES
from .controlnet_nodes import NODE_DISPLAY_NAME_MAPPINGS as _CONTROLNET_NAMES
from .preprocessor_nodes import NODE_CLASS_MAPPINGS as _PREPROCESSOR_CLASSES
from .preprocessor_nodes import NODE_DISPLAY_NAME_MAPPINGS as _PREPROCESSOR_NAMES
from .sample_nodes import NODE_CLASS_MAPPINGS as _SAMPLE_CLASSES
from .sample_nodes import NODE_DISPLAY_NAME_MAPPINGS as _SAMPLE_NAMES
from .timing_nodes import NODE_CLASS_MAPPINGS as _TIMING_CLASSES
from .timing_nodes import NODE_DISPLAY_NAME_MAPPINGS as _TIMING_NAMES
from .train_nodes import NODE_CLASS_MAPPINGS as _TRAIN_CLASSES
from .train_nodes import NODE_DISPLAY_NAME_MAPPINGS as _TRAIN_NAMES

NODE_CLASS_MAPPINGS = {**_CONTROLNET_CLASSES, **_PREPROCESSOR_CLASSES, **_SAMPLE_CLASSES, **_TIMING_CLASSES,
                       **_TRAIN_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {**_CONTROLNET_NAMES, **_PREPROCESSOR_NAMES, **_SAMPLE_NAMES, **_TIMING_NAMES,
                              **_TRAIN_NAMES}
