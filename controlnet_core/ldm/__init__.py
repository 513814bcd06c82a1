"""The ldm (CompVis / ComfyUI) UNet architecture shared by the control systems: building blocks
with the original parameter names, and the diffusers ↔ ldm key tables."""
