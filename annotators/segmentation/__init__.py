"""Segmentation render: draw a label map with the ADE20K 150-class palette."""
from .palette import ADE20K_CLASSES, ADE20K_PALETTE
from .render import labels_to_batch, render_segmentation

__all__ = ["ADE20K_CLASSES", "ADE20K_PALETTE", "labels_to_batch", "render_segmentation"]
