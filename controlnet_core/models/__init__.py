from .controlnet import ControlNetModel, Residuals

__all__ = ["ControlNetModel", "Residuals"]
