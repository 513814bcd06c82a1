"""Errors raised by controlnet_core.

Every message names the thing at fault, what was expected and what was found, so a user reading
the ComfyUI error popup knows which file or input to fix.
"""
from __future__ import annotations


class ControlNetError(ValueError):
    """Base class of every error this package raises on purpose."""


class CheckpointError(ControlNetError):
    """A checkpoint file or state dict that cannot be used: corrupt, truncated, unknown layout,
    unsafe pickle, or missing the base weights it needs."""


class InputError(ControlNetError):
    """A runtime input (latent, hint image, mask, strength, context) that does not fit the model."""


class BaseModelRequired(CheckpointError):
    """A file whose weights are built from the base model's (diff ControlNets) was loaded without it.
    The node layer turns it into a message naming its `model` input."""
