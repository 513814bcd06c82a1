"""Control files the pack recognises but does not run, by the keys that give them away.

Each detector returns an Identity with `runs_here=False` and advice naming what runs the file. When
the pack learns to run one of these systems, its detector moves into that system's folder and its
entry in systems.SYSTEMS gets a loader.
"""
from __future__ import annotations

from collections.abc import Mapping

from .identity import Identity

Shapes = Mapping[str, tuple[int, ...]]
HOST_CONTROLNET_NODES = "the host's own 'Load ControlNet Model' and 'Apply ControlNet' nodes"


def _has(shapes: Shapes, *keys: str) -> bool:
    return all(k in shapes for k in keys)


def hunyuan_dit(shapes: Shapes, source: str) -> Identity | None:
    if not any(k.startswith("after_proj_list.") for k in shapes) or "before_proj.weight" not in shapes:
        return None
    return Identity("HunyuanDiT ControlNet", "HunyuanDiT", "original", "hunyuandit", runs_here=False,
                    advice=f"it drives a HunyuanDiT transformer, not an SD UNet: use {HOST_CONTROLNET_NODES}")




def dit_controlnets(shapes: Shapes, source: str) -> Identity | None:
    """SD3 / SD3.5, Flux and Qwen-Image ControlNets (transformer bases)."""
    advice = f"it drives a diffusion transformer, not an SD UNet: use {HOST_CONTROLNET_NODES} (with a VAE)"
    if "controlnet_blocks.0.linear.weight" in shapes:
        return Identity("Flux ControlNet", "Mistoline", "original", "flux", runs_here=False, advice=advice)
    if "controlnet_blocks.0.weight" not in shapes:
        return None
    if "double_blocks.0.img_attn.norm.key_norm.scale" in shapes:
        return Identity("Flux ControlNet", "XLabs", "original", "flux", runs_here=False, advice=advice)
    if "pos_embed_input.proj.weight" in shapes:
        stability = "transformer_blocks.0.adaLN_modulation.1.bias" in shapes
        return Identity("SD3 ControlNet", "SD3.5 (Stability)" if stability else "SD3 (diffusers)",
                        "original" if stability else "diffusers", "sd3", runs_here=False, advice=advice)
    if "transformer_blocks.0.img_mlp.net.0.proj.weight" in shapes:
        return Identity("Qwen-Image ControlNet", "InstantX", "diffusers", "qwen-image", runs_here=False, advice=advice)
    if "controlnet_x_embedder.weight" in shapes:
        variant = "InstantX Union" if "controlnet_mode_embedder.weight" in shapes else "InstantX"
        return Identity("Flux ControlNet", variant, "diffusers", "flux", runs_here=False, advice=advice)
    return None


def stable_cascade(shapes: Shapes, source: str) -> Identity | None:
    if not ("backbone.0.0.weight" in shapes or "backbone.10.blocks.0.weight" in shapes):
        return None
    return Identity("Stable Cascade ControlNet", "Stable Cascade", "original", "stable-cascade", runs_here=False,
                    advice=f"it drives Stable Cascade's stage C: use {HOST_CONTROLNET_NODES}")
