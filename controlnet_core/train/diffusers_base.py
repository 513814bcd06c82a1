"""The frozen base and the dataset encoders built on diffusers / transformers (the command line's path)."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack

import torch

from ._core import STREAM, timestep_embedding
from .interfaces import ControlSignal, FrozenBase, TextCondition
from .output import save_safetensors
from .schedule import NoiseSchedule
from .sd_checkpoint import MAX_TOKENS, UNET_PREFIX, BaseComponents

# diffusers UNet2DConditionModel parameters of the decoder (ldm: output_blocks and out).
DECODER_PREFIXES = ("up_blocks.", "conv_norm_out.", "conv_out.")
SDXL_TIME_ID_DIM = 256  # width of SDXL's sinusoidal embedding of each size/crop number


def sdxl_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """(original h, original w, crop top, crop left, target h, target w): a square crop at the training
    resolution, as ComfyUI and diffusers condition by default."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).repeat(batch, 1)


def sdxl_y(pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """The ldm/ComfyUI `y`: pooled text embedding, then a 256-wide [cos | sin] embedding of each time id."""
    embedded = timestep_embedding(time_ids.flatten(), SDXL_TIME_ID_DIM).reshape(time_ids.shape[0], -1)
    return torch.cat([pooled.float(), embedded.to(pooled.device)], dim=-1)


class DiffusersBase(FrozenBase):
    """diffusers' UNet2DConditionModel, frozen."""

    supported_signal_fields = frozenset({"down", "mid", "stream"})

    def __init__(self, unet, family: str, schedule: NoiseSchedule, *, ldm_names: Mapping[str, str] | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.unet = unet.to(device).eval().requires_grad_(False)
        self.family, self.schedule = family, schedule
        self.device = torch.device(device)
        self.ldm_names = dict(ldm_names or {})

    def cast(self, dtype: torch.dtype) -> None:
        """Hold the frozen UNet in `dtype` (half precision on a GPU). Build the ControlNet copy first:
        it should start from the full-precision weights."""
        if self.unet.dtype != dtype:
            self.unet.to(dtype=dtype)

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
                signal: ControlSignal | None) -> torch.Tensor:
        self.check_signal(signal)
        down = mid = None
        if signal is not None:
            down = None if signal.down is None else tuple(signal.down)
            mid = signal.mid
        added = dict(text.unet_kwargs) or None
        with ExitStack() as hooks:
            for addition in (signal.stream or []) if signal is not None else []:
                hooks.callback(self._hook_stream(addition.target, addition.value).remove)
            return self.unet(x_t, timesteps, encoder_hidden_states=text.context, added_cond_kwargs=added,
                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                             return_dict=False)[0]

    def _hook_stream(self, target, function):
        """Add function(hidden) to the stream after ldm input block `target.block`, where that block
        ends a diffusers down block (or is conv_in); the skip already stored there is not changed
        (the sum is a new tensor)."""
        levels = len(self.unet.down_blocks)
        per_level = self.unet.config.layers_per_block
        per_level = per_level if isinstance(per_level, int) else per_level[0]
        if target.kind == STREAM and target.block == 0:  # after conv_in: what enters down block 0
            def before(module, args, kwargs):
                hidden = kwargs["hidden_states"]
                return args, {**kwargs, "hidden_states": hidden + function(hidden)}
            return self.unet.down_blocks[0].register_forward_pre_hook(before, with_kwargs=True)
        # ldm index of each down block's last block: its downsampler, or its last res block (deepest level)
        ends = {(level + 1) * (per_level + 1) if level < levels - 1 else level * (per_level + 1) + per_level: level
                for level in range(levels)}
        if target.kind == STREAM and target.block in ends:
            def after(module, args, output):
                hidden, skips = output
                return hidden + function(hidden), skips
            return self.unet.down_blocks[ends[target.block]].register_forward_hook(after)
        raise NotImplementedError(f"{type(self).__name__} cannot add to the UNet stream at {target} "
                                  f"(supported: after input blocks {sorted({0, *ends})})")

    def unet_state_dict(self) -> Mapping[str, torch.Tensor]:
        return self.unet.state_dict()

    def named_unet_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self.unet.named_parameters()

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        decoder = [p for name, p in self.unet.named_parameters() if name.startswith(DECODER_PREFIXES)]
        for parameter in decoder:
            parameter.data = parameter.data.float()  # full-precision master weights for training
            parameter.requires_grad_(True)
        return decoder

    def check_can_save_unet(self) -> None:
        unnamed = [k for k in self.unet.state_dict() if k not in self.ldm_names]
        if unnamed:
            raise NotImplementedError(f"cannot name {len(unnamed)} UNet tensors in the original layout "
                                      f"(e.g. {unnamed[:3]}); the trained decoder could not be saved")

    def save_unet(self, path: str | os.PathLike, dtype: torch.dtype) -> None:
        """The whole UNet under its original checkpoint names, without the `model.diffusion_model.`
        prefix: a UNet-only file (ComfyUI's "Load Diffusion Model", models/diffusion_models)."""
        self.check_can_save_unet()
        state = {self.ldm_names[k][len(UNET_PREFIX):]: v for k, v in self.unet.state_dict().items()}
        save_safetensors(state, path, dtype, {"format": "pt"})

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()


class DiffusersEncoder:
    """The checkpoint's VAE and text encoder(s) for encode_dataset."""

    def __init__(self, components: BaseComponents, device: str | torch.device = "cpu") -> None:
        self.family = components.info.family
        self.device = torch.device(device)
        self.vae = components.vae.to(self.device)
        self.text_encoders = [encoder.to(self.device) for encoder in components.text_encoders]
        self.tokenizers = components.tokenizers
        self.scale = self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distribution = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return distribution.mean * self.scale, distribution.std * self.scale

    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int):
        if self.family == "sd1":
            ids = self._token_ids(self.tokenizers[0], prompts)
            return self.text_encoders[0](ids).last_hidden_state, None, {}
        # SDXL: penultimate hidden states of both encoders side by side; pooled output of the second.
        first = self.text_encoders[0](self._token_ids(self.tokenizers[0], prompts), output_hidden_states=True)
        second = self.text_encoders[1](self._token_ids(self.tokenizers[1], prompts), output_hidden_states=True)
        context = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second.text_embeds
        time_ids = sdxl_time_ids(resolution, len(prompts)).to(self.device)
        return context, sdxl_y(pooled, time_ids), {"text_embeds": pooled, "time_ids": time_ids}
