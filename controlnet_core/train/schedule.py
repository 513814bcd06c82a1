"""The base model's noise schedule and prediction type, as training needs them.

Stable Diffusion 1.x, 2.x and SDXL all use ldm's "linear" schedule (diffusers calls it
"scaled_linear"): betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)², computed in float64 as ldm
does. The ComfyUI host keeps the same schedule as sigmas = sqrt((1 − ᾱ) / ᾱ), so ᾱ = 1 / (1 + σ²)
recovers it from a loaded model.

    x_t = sqrt(ᾱ_t) · x_0 + sqrt(1 − ᾱ_t) · ε
    target: ε ("epsilon") or v = sqrt(ᾱ_t) · ε − sqrt(1 − ᾱ_t) · x_0 ("v_prediction")
"""
from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
SD_TIMESTEPS = 1000
SD_BETA_START, SD_BETA_END = 0.00085, 0.012


class NoiseSchedule:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type: expected one of {PREDICTION_TYPES}, found {prediction_type!r}")
        alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all():
            raise ValueError("noise schedule: alphas_cumprod must be a 1-D tensor of values in (0, 1]")
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type

    @classmethod
    def stable_diffusion(cls, prediction_type: str = "epsilon") -> "NoiseSchedule":
        betas = torch.linspace(SD_BETA_START ** 0.5, SD_BETA_END ** 0.5, SD_TIMESTEPS, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0), prediction_type)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, prediction_type: str) -> "NoiseSchedule":
        """From a discrete sigma table (the host's model_sampling.sigmas)."""
        sigmas = sigmas.detach().to("cpu", torch.float64)
        return cls(1.0 / (1.0 + sigmas ** 2), prediction_type)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coefficients(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alphas_cumprod[timesteps.detach().to("cpu", torch.long)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        signal = alpha.sqrt().to(like.device, torch.float32).view(shape)
        noise = (1.0 - alpha).sqrt().to(like.device, torch.float32).view(shape)
        return signal, noise

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._coefficients(timesteps, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        signal, sigma = self._coefficients(timesteps, x0)
        return signal * noise - sigma * x0

    def predict_x0(self, x_t: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_0 implied by a model output (for samplers)."""
        signal, sigma = self._coefficients(timesteps, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - sigma * prediction) / signal
        return signal * x_t - sigma * prediction

    def predict_noise(self, x_t: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return prediction
        signal, sigma = self._coefficients(timesteps, x_t)
        return sigma * x_t + signal * prediction
