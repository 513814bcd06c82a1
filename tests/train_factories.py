"""Tiny single-file Stable Diffusion checkpoints, tokenizers and datasets for the training tests.

A checkpoint is built from diffusers / transformers models of the tiny configs in factories.py and
written in the original (ldm / sgm) key layout users keep on disk:

- UNet under `model.diffusion_model.` (encoder via the pack's table, decoder by the mapping below),
- VAE under `first_stage_model.` (4 levels of 32 channels, so latents are 1/8 of the image, as in SD),
- text encoders: SD1 CLIP-L under `cond_stage_model.transformer.`; SDXL CLIP-L under
  `conditioner.embedders.0.transformer.` and OpenCLIP-G (open_clip names) under `conditioner.embedders.1.model.`.

Text encoders keep the real widths (768, 1280) so the UNet's context width and the family inference
stay real; they have one layer and a tiny vocabulary. `verify_roundtrip` converts each file back with
diffusers' own single-file converters and checks every tensor, so the mappings here are proven by an
independent implementation, not trusted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from controlnet_core.ldm.diffusers_keys import RESNET_RENAMES, diffusers_unet_encoder_to_ldm
from tests.factories import make_diffusers_unet, randomize_, save_state_dict, tiny_config

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_CLIP_G = "conditioner.embedders.1.model."


# ---- tokenizer -------------------------------------------------------------------------------

def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table (the BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer with the byte alphabet, a few merges and the two special tokens (~520 ids):
    the same file format as the real vocab.json / merges.txt, so the same loader reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    merges = ["r e</w>", "s q", "sq u", "squ a", "squa re</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>"]
    vocab = alphabet + [c + "</w>" for c in alphabet]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


TINY_VOCAB = 2 * 256 + 10 + 2


# ---- models ----------------------------------------------------------------------------------

def make_tiny_vae(seed: int = 5):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
    return randomize_(vae, seed).eval()


def make_tiny_clip(hidden: int, projection: bool, act: str, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=hidden // 64, max_position_embeddings=77, hidden_act=act,
                            projection_dim=hidden, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return randomize_(model, seed).eval()


def _hf_clip_keys(model) -> dict[str, torch.Tensor]:
    """HF CLIP state dict with the `text_model.` prefix (transformers >= 5.6 dropped it from CLIPTextModel)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not hasattr(model, "text_model"):
        state = {f"text_model.{k}": v for k, v in state.items()}
    return state


# ---- diffusers -> original layout (decoder, VAE, open_clip) ----------------------------------------

def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel in ldm names: encoder by the pack's table, decoder here."""
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ldm = diffusers_unet_encoder_to_ldm(state)
    per_level = unet.config.layers_per_block + 1
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("conv_norm_out."):
            ldm[f"out.0.{parts[-1]}"] = value
        elif key.startswith("conv_out."):
            ldm[f"out.2.{parts[-1]}"] = value
        elif key.startswith("up_blocks."):
            level, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                module, _, leaf = rest.rpartition(".")
                ldm[f"output_blocks.{level * per_level + index}.0.{RESNET_RENAMES[module]}.{leaf}"] = value
            elif kind == "attentions":
                ldm[f"output_blocks.{level * per_level + index}.1.{rest}"] = value
            else:  # upsamplers.0.conv.* sits after the attention when the block has one
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
                ldm[f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}."
                    f"{rest}"] = value
    return ldm


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        side = parts[0]  # encoder / decoder
        rest = parts[1:]
        if rest[0] in ("conv_in", "conv_out"):
            name = rest[0]
        elif rest[0] == "conv_norm_out":
            name = "norm_out"
        elif rest[0] == "mid_block":
            if rest[1] == "resnets":
                name = f"mid.block_{int(rest[2]) + 1}.{_VAE_RESNET['.'.join(rest[3:])]}"
            else:
                name = f"mid.attn_1.{_VAE_ATTENTION['.'.join(rest[3:])]}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        else:  # down_blocks / up_blocks
            level = int(rest[1])
            if side == "decoder":
                level = levels - 1 - level
            group = "down" if side == "encoder" else "up"
            if rest[2] == "resnets":
                name = f"{group}.{level}.block.{rest[3]}.{_VAE_RESNET['.'.join(rest[4:])]}"
            else:
                name = f"{group}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.conv"
        out[f"{side}.{name}.{leaf}"] = value
    return out


def open_clip_to_ldm(model) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection in open_clip names."""
    state = _hf_clip_keys(model)
    out, layers = {}, model.config.num_hidden_layers
    out["token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = state["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = state["text_model.final_layer_norm.bias"]
    out["text_projection"] = state["text_projection.weight"].t().contiguous()
    for i in range(layers):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[oc + f"attn.in_proj_{leaf}"] = torch.cat([state[hf + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            out[oc + f"attn.out_proj.{leaf}"] = state[hf + f"self_attn.out_proj.{leaf}"]
            out[oc + f"ln_1.{leaf}"] = state[hf + f"layer_norm1.{leaf}"]
            out[oc + f"ln_2.{leaf}"] = state[hf + f"layer_norm2.{leaf}"]
            out[oc + f"mlp.c_fc.{leaf}"] = state[hf + f"mlp.fc1.{leaf}"]
            out[oc + f"mlp.c_proj.{leaf}"] = state[hf + f"mlp.fc2.{leaf}"]
    out["logit_scale"] = torch.tensor(4.6)
    return out


# ---- checkpoints -----------------------------------------------------------------------------

def make_tiny_base(name: str, seed: int = 0) -> dict:
    """The diffusers/transformers models of a tiny SD1 or SDXL base: {'unet', 'vae', 'text_encoders'}."""
    unet = make_diffusers_unet(name, seed=seed + 1)
    vae = make_tiny_vae(seed + 2)
    if name == "sdxl":
        encoders = [make_tiny_clip(768, False, "quick_gelu", seed + 3), make_tiny_clip(1280, True, "gelu", seed + 4)]
    else:
        encoders = [make_tiny_clip(768, False, "quick_gelu", seed + 3)]
    return {"name": name, "unet": unet, "vae": vae, "text_encoders": encoders}


def base_state_dict(models: dict) -> dict[str, torch.Tensor]:
    state = {UNET + k: v for k, v in unet_to_ldm(models["unet"]).items()}
    state.update({VAE + k: v for k, v in vae_to_ldm(models["vae"]).items()})
    if models["name"] == "sdxl":
        first, second = models["text_encoders"]
        state.update({SDXL_CLIP_L + k: v for k, v in _hf_clip_keys(first).items()})
        state.update({SDXL_CLIP_G + k: v for k, v in open_clip_to_ldm(second).items()})
    else:
        state.update({SD1_CLIP + k: v for k, v in _hf_clip_keys(models["text_encoders"][0]).items()})
    return state


def write_tiny_base(path: Path, models: dict, extra: dict[str, torch.Tensor] | None = None) -> Path:
    state = base_state_dict(models)
    state.update(extra or {})
    return save_state_dict({k: v.contiguous() for k, v in state.items()}, path)


def verify_roundtrip(models: dict, state: dict[str, torch.Tensor]) -> None:
    """diffusers' own single-file converters must give back every tensor of the diffusers models."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)

    def same(converted, original, what):
        original = {k: v for k, v in original.items() if not k.endswith("position_ids")}
        converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
        assert set(converted) == set(original), f"{what}: {sorted(set(converted) ^ set(original))[:6]}"
        for key in original:
            assert torch.equal(converted[key].reshape(original[key].shape), original[key]), f"{what}: {key}"

    unet = models["unet"]
    same(convert_ldm_unet_checkpoint(state, dict(unet.config)), unet.state_dict(), "UNet")
    vae = models["vae"]
    same(convert_ldm_vae_checkpoint(state, dict(vae.config)), vae.state_dict(), "VAE")
    first = models["text_encoders"][0]
    clip_state = convert_ldm_clip_checkpoint(state)
    same(clip_state, _hf_clip_keys(first), "CLIP-L")
    if models["name"] == "sdxl":
        second = models["text_encoders"][1]
        same(convert_open_clip_checkpoint(second, state, prefix=SDXL_CLIP_G), _hf_clip_keys(second), "OpenCLIP-G")


# ---- datasets --------------------------------------------------------------------------------

def write_dataset(folder: Path, count: int = 4, size: tuple[int, int] = (80, 64), seed: int = 0,
                  captions: list[str] | None = None) -> Path:
    """images/, conditioning/ (a bright square where the image has one) and captions/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("images", "conditioning", "captions"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        control = np.zeros((height, width, 3), np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        control[top:top + height // 3, left:left + width // 3] = 255
        Image.fromarray(image).save(folder / "images" / f"sample_{index:02d}.png")
        Image.fromarray(control).save(folder / "conditioning" / f"sample_{index:02d}.png")
        caption = captions[index % len(captions)] if captions else f"a square {index}"
        (folder / "captions" / f"sample_{index:02d}.txt").write_text(caption, encoding="utf-8")
    return folder


__all__ = ["make_tiny_base", "write_tiny_base", "write_tiny_tokenizer", "write_dataset", "verify_roundtrip",
           "base_state_dict", "tiny_config"]
