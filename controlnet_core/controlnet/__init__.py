"""ControlNet: a trainable copy of the UNet encoder whose zero convolutions add residuals to the
UNet's skip connections and middle block (original, diffusers and diff layouts; SD1.x/SD2.x/SDXL)."""
from .config import ControlNetConfig
from .loader import detect, from_unet, load_controlnet
from .model import ControlNetModel, Residuals

__all__ = ["ControlNetConfig", "ControlNetModel", "Residuals", "detect", "from_unet", "load_controlnet"]
