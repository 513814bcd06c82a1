"""Training a ControlNet the way the paper does (see loop.py), from a single-file checkpoint (cli.py)
or from the ComfyUI host's models (nodes/train_nodes.py); the same loop trains a ControlNeXt module
and its UNet subset as the released scripts do (trainable_controlnext.py).

The core of this package is pure PyTorch; diffusers and transformers (the `[train]` extra) are
imported only to build a base model and its encoders from a checkpoint file.
"""
from .cache import DatasetEncoder, EncodedDataset, HintStore, encode_dataset
from .dataset import DatasetError, Example, scan_dataset
from .interfaces import ControlSignal, FrozenBase, TextCondition, TrainableControl
from .loop import TrainConfig, TrainResult, train, training_loss
from .output import OutputError, check_output_path
from .schedule import NoiseSchedule
from .trainable_controlnet import TrainableControlNet
from .trainable_controlnext import TrainableControlNeXt

__all__ = [
    "ControlSignal", "DatasetEncoder", "DatasetError", "EncodedDataset", "Example", "FrozenBase", "HintStore",
    "NoiseSchedule", "OutputError", "TextCondition", "TrainConfig", "TrainResult", "TrainableControl",
    "TrainableControlNeXt", "TrainableControlNet", "check_output_path", "encode_dataset", "scan_dataset", "train", "training_loss",
]
