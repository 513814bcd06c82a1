"""ComfyUI node "Train ControlNet": the paper's training loop on the host's own MODEL, CLIP and VAE.

The training itself is controlnet_core.train (loop, dataset checks, encodings cache). This module
adapts the host: its UNet is the frozen base (HostUNetBase), its VAE and CLIP encode the dataset
once (HostEncoder), its progress bar shows the steps, and the file lands in models/controlnet.

Everything that can be wrong with the inputs (dataset, file name, output folder, model kind) is
checked before anything is encoded; the file is written only at the end, atomically, so an error or
a cancelled prompt leaves nothing behind.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from ..controlnet_core import InputError
from ..controlnet_core.train import (FrozenBase, NoiseSchedule, TextCondition, TrainableControlNet, TrainConfig,
                                     check_output_path, encode_dataset, scan_dataset, train)
from ..controlnet_core.train.interfaces import ControlSignal
from .controlnet_nodes import LoadControlNet

KEY_PREFIX = "ControlNetPack_"
CATEGORY = "conditioning/controlnet pack/training"
MODELS_FOLDER = "controlnet"
PREDICTION_TYPES = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}
MAX_TOKENS = 77
ENCODER_PREFIXES = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")  # what the ControlNet copies
ACTIVATION_MARGIN = 2 << 30
SAFE_NAME = re.compile(r"^[\w\- .]+$")
ENCODE_BATCH = 4


def resolve_dataset_folder(folder: str) -> str:
    """An absolute path as typed, or a path relative to ComfyUI's input folder."""
    if not isinstance(folder, str) or not folder.strip():
        raise InputError("dataset_folder is empty: give the folder holding images/, conditioning/ and captions")
    folder = os.path.expanduser(folder.strip())
    return folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)


def output_path_for(prefix: str) -> tuple[str, str]:
    """(file name, full path) of the next free `<prefix>_NNNNN.safetensors` in the first controlnet folder."""
    if not isinstance(prefix, str) or not SAFE_NAME.match(prefix.strip()) or prefix.strip(" .") == "":
        raise InputError(f"filename_prefix {prefix!r}: use letters, digits, spaces, '-', '_' or '.', without "
                         f"folders; the file goes to ComfyUI's models/{MODELS_FOLDER} folder")
    prefix = prefix.strip()
    folders = list(folder_paths.get_folder_paths(MODELS_FOLDER))
    if not folders:
        raise InputError(f"ComfyUI has no models/{MODELS_FOLDER} folder configured")
    folder = folders[0]
    pattern = re.compile(re.escape(prefix) + r"_(\d{5})\.safetensors$")
    taken = [int(m.group(1)) for name in (os.listdir(folder) if os.path.isdir(folder) else ())
             if (m := pattern.match(name))]
    name = f"{prefix}_{max(taken, default=0) + 1:05d}.safetensors"
    return name, os.path.join(folder, name)


def _unet_of(model):
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    if diffusion_model is None or not hasattr(diffusion_model, "input_blocks") or \
            not hasattr(diffusion_model, "output_blocks"):
        kind = type(diffusion_model).__name__ if diffusion_model is not None else type(model).__name__
        raise InputError(f"Train ControlNet needs an SD1.x, SD2.x or SDXL model (a UNet with input and output "
                         f"blocks); this MODEL is a {kind}")
    in_channels = getattr(diffusion_model, "in_channels", 4)
    if in_channels != 4:
        raise InputError(f"Train ControlNet: this model's UNet takes {in_channels} input channels (an inpainting or "
                         "instruction model); ControlNets are trained on a 4-channel base model")
    return diffusion_model


def unet_family(unet) -> str:
    """sd1 / sd2 / sdxl from the text-context width of the first cross-attention (as the ControlNet infers it)."""
    linear = any(name.endswith("proj_in.weight") and p.ndim == 2 for name, p in unet.named_parameters())
    for name, parameter in unet.named_parameters():
        if name.endswith("attn2.to_k.weight"):
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(parameter.shape[1], "sd2" if linear else "sd1")
    return "sd2" if linear else "sd1"


class HostUNetBase(FrozenBase):
    """The host's ldm UNet (comfy.ldm...openaimodel.UNetModel), frozen; the control goes in through its
    `control` argument ({"output": skip residuals, "middle": [mid residual]}), as the host's own
    ControlNets do.

    The host builds its models inside torch.inference_mode, and inference tensors cannot be saved for
    backward. The gradient reaches the ControlNet only through the decoder, so the decoder's weights
    get normal copies for the duration of training (torch.func.functional_call); the encoder runs
    as it is (nothing there needs a gradient)."""

    def __init__(self, patcher) -> None:
        self.unet = _unet_of(patcher)
        model_type = getattr(getattr(patcher.model, "model_type", None), "name", None)
        if model_type not in PREDICTION_TYPES:
            raise InputError(f"Train ControlNet: the model predicts {model_type or 'something unknown'}; training "
                             f"supports {' and '.join(PREDICTION_TYPES)} models")
        sampling = patcher.get_model_object("model_sampling")
        sigmas = getattr(sampling, "sigmas", None)
        if sigmas is None or sigmas.ndim != 1 or sigmas.numel() < 2:
            raise InputError("Train ControlNet: the model has no discrete noise schedule (model_sampling.sigmas)")
        self.schedule = NoiseSchedule.from_sigmas(sigmas, PREDICTION_TYPES[model_type])
        self.family = unet_family(self.unet)
        self.device = torch.device(patcher.load_device)
        # The host leaves requires_grad on (it never needs gradients); off, autograd records nothing in the
        # frozen UNet but the path from the control's residuals to the loss. (The host's own LoRA trainer
        # does the same.)
        self.unet.requires_grad_(False)
        decoder = {id(p) for part in (self.unet.output_blocks, getattr(self.unet, "out", None)) if part is not None
                   for p in part.parameters()}
        self.decoder_copies = {name: p.detach().clone() for name, p in self.unet.named_parameters()
                               if id(p) in decoder and p.is_inference()}

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, text: TextCondition,
                signal: ControlSignal | None) -> torch.Tensor:
        self.check_signal(signal)
        control = None
        if signal is not None and signal.down is not None:
            control = {"output": list(signal.down), "middle": [signal.mid]}
        kwargs = {"timesteps": timesteps.float(), "context": text.context, "y": text.y, "control": control}
        if self.decoder_copies:
            return torch.func.functional_call(self.unet, self.decoder_copies, (x_t,), kwargs, strict=False)
        return self.unet(x_t, **kwargs)

    def unet_state_dict(self) -> Mapping[str, torch.Tensor]:
        return self.unet.state_dict()

    def named_unet_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self.unet.named_parameters()

    # No gradient checkpointing inside the host's UNet: a checkpointed block recomputes in backward,
    # after functional_call has put the host's own (inference) weights back, and it would change the
    # host's shared modules. The ControlNet itself is checkpointed on a GPU.


class HostEncoder:
    """The host's VAE (mean latent, as its encode returns) and CLIP for encode_dataset."""

    def __init__(self, vae, clip, model) -> None:
        self.vae, self.clip, self.model = vae, clip, model.model

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        latent = self.vae.encode(((pixels + 1.0) / 2.0).movedim(1, -1))
        return self.model.process_latent_in(latent).float().cpu(), None

    def encode_prompts(self, prompts: list[str], resolution: int):
        contexts, ys = [], []
        for prompt in prompts:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            contexts.append(cond[:, :MAX_TOKENS].float().cpu())  # the first 75 tokens, as training tokenizers truncate
            y = self.model.encode_adm(pooled_output=pooled, width=resolution, height=resolution, crop_w=0, crop_h=0,
                                      target_width=resolution, target_height=resolution, device=cond.device)
            ys.append(None if y is None else y.float().cpu())
        y = None if any(v is None for v in ys) else torch.cat(ys)
        return torch.cat(contexts), y, {}


class TrainControlNet:
    DESCRIPTION = ("Trains a new ControlNet for this model the way the ControlNet paper does: a trainable copy of "
                   "the UNet encoder joined by zero convolutions, the base model frozen, half the captions "
                   "dropped, the model's own noise schedule, AdamW. The dataset folder holds images/ (targets), "
                   "conditioning/ (control maps of the same names and sizes) and captions/ (NAME.txt). The result "
                   "is saved to models/controlnet and returned ready to apply.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONTROL_NET", "STRING")
    RETURN_NAMES = ("control_net", "file_name")
    OUTPUT_TOOLTIPS = ("The trained ControlNet, loaded from the saved file.",
                       "The saved file's name in models/controlnet (for LoadControlNet in later workflows).")
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model (SD1.x, SD2.x or SDXL); it stays unchanged."}),
                "clip": ("CLIP", {"tooltip": "The base model's text encoder, for the captions."}),
                "vae": ("VAE", {"tooltip": "The base model's VAE, for the target images."}),
                "dataset_folder": ("STRING", {"default": "", "tooltip":
                                              "Folder with images/, conditioning/ and captions/ (files paired by "
                                              "name). An absolute path, or relative to ComfyUI's input folder."}),
                "filename_prefix": ("STRING", {"default": "controlnet_trained", "tooltip":
                                               "Saved as <prefix>_00001.safetensors (next free number) in "
                                               "models/controlnet."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 1_000_000, "step": 1,
                                  "tooltip": "Optimizer steps."}),
                "learning_rate": ("FLOAT", {"default": 1e-5, "min": 1e-7, "max": 1e-2, "step": 1e-6, "round": False,
                                            "tooltip": "AdamW learning rate; the paper's is 1e-5."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "step": 1,
                                       "tooltip": "Examples per step."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip":
                                       "Square training size in pixels: images are resized (shorter side) and "
                                       "centre-cropped."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "step": 1,
                                 "tooltip": "Seed of the data order, noise, timesteps and caption dropout."}),
            },
            "optional": {
                "prompt_dropout": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                             "Share of captions replaced by the empty prompt (the paper: 0.5), so "
                                             "the ControlNet learns to follow the control map on its own."}),
            },
        }

    def train(self, model, clip, vae, dataset_folder: str, filename_prefix: str, steps: int, learning_rate: float,
              batch_size: int, resolution: int, seed: int, prompt_dropout: float = 0.5):
        config = TrainConfig(steps=int(steps), learning_rate=float(learning_rate), batch_size=int(batch_size),
                             prompt_dropout=float(prompt_dropout), seed=int(seed), checkpoint_every=0)
        config.validate()
        examples = scan_dataset(resolve_dataset_folder(dataset_folder))
        name, path = output_path_for(filename_prefix)
        check_output_path(path)
        unet = _unet_of(model)
        levels = len(getattr(unet, "channel_mult", (1, 2, 4, 4)))
        multiple = 8 * 2 ** (levels - 1)
        if resolution % multiple:
            raise InputError(f"resolution {resolution}: expected a multiple of {multiple} for this model")

        encode_bar = comfy.utils.ProgressBar(len(examples))
        data = encode_dataset(examples, resolution, HostEncoder(vae, clip, model), batch_size=ENCODE_BATCH,
                              progress=lambda done, total: encode_bar.update_absolute(done, total))
        # The UNet fully on the device (the VAE and CLIP may have pushed it out), with room for what the memory
        # manager does not see: the ControlNet (an encoder copy: fp32 weights, gradients, 2 Adam moments),
        # the decoder copies, and activations.
        encoder = sum(p.numel() for name, p in unet.named_parameters() if name.startswith(ENCODER_PREFIXES))
        decoder = sum(p.numel() * p.element_size() for part in (unet.output_blocks, getattr(unet, "out", None))
                      if part is not None for p in part.parameters())
        comfy.model_management.load_models_gpu([model], memory_required=16 * encoder + decoder + ACTIVATION_MARGIN,
                                               force_full_load=True)
        with torch.inference_mode(False):
            base = HostUNetBase(model)
            control = TrainableControlNet.from_base(base, seed=config.seed)
            bar = comfy.utils.ProgressBar(config.steps)

            def progress(step: int, total: int, loss: float) -> None:
                bar.update_absolute(step, total)
                if step == 1 or step == total or step % max(1, total // 20) == 0:
                    logging.info("Train ControlNet: step %d/%d, loss %.4f", step, total, loss)
                comfy.model_management.throw_exception_if_processing_interrupted()

            result = train(control, base, data, config, progress=progress)
            record = {"steps": result.steps, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                      "resolution": resolution, "prompt_dropout": config.prompt_dropout, "seed": config.seed,
                      "examples": len(examples), "prediction_type": base.schedule.prediction_type,
                      "final_loss": result.losses[-1]}
            control.save(path, torch.float16, {"format": "pt", "controlnet_pack.training": json.dumps(record)})
        tail = result.losses[-min(20, len(result.losses)):]
        summary = (f"saved {name}: {result.steps} steps on {len(examples)} examples, mean loss of the last "
                   f"{len(tail)} steps {sum(tail) / len(tail):.4f}")
        logging.info("Train ControlNet: %s", summary)
        control_net, = LoadControlNet().load(name)
        return {"ui": {"text": [summary]}, "result": (control_net, name)}


NODE_CLASS_MAPPINGS = {f"{KEY_PREFIX}TrainControlNet": TrainControlNet}
NODE_DISPLAY_NAME_MAPPINGS = {f"{KEY_PREFIX}TrainControlNet": "Train ControlNet"}
