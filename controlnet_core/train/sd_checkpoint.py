"""A single-file Stable Diffusion checkpoint (SD1.x or SDXL), as users keep them, for training.

`inspect_base_checkpoint` reads only the tensor names and shapes and refuses anything that is not a
full SD1.x/SDXL checkpoint with a message naming what the file is. `load_base_checkpoint` then
builds, without any download:

- the UNet as diffusers' UNet2DConditionModel (the frozen base),
- the VAE as diffusers' AutoencoderKL, the text encoder(s) as transformers' CLIP models,

from configs derived here from the tensor shapes (diffusers would otherwise fetch them from the
Hub) and weights converted by diffusers' own single-file conversion functions. The CLIP tokenizer
is not inside single-file checkpoints: it is read from a folder with vocab.json and merges.txt
(`--tokenizer`), found automatically when the pack sits inside a ComfyUI tree (comfy/sd1_tokenizer).

Needs the optional `[train]` dependencies: diffusers and transformers.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._core import (UNET_ENCODER_PREFIXES, CheckpointError, ControlNetConfig, InputError, infer_config,
                    read_state_dict, read_tensor_shapes)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SUPPORTED_FAMILIES = ("sd1", "sdxl")
VAE_SCALE = {"sd1": 0.18215, "sdxl": 0.13025}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MAX_TOKENS = 77
# Text encoders by family: (name, key prefix in the checkpoint, layout).
TEXT_ENCODERS = {
    "sd1": (("clip_l", "cond_stage_model.transformer.text_model.", "hf"),),
    "sdxl": (("clip_l", "conditioner.embedders.0.transformer.text_model.", "hf"),
             ("clip_g", "conditioner.embedders.1.model.", "open_clip")),
}
# Files that are not SD1.x/SDXL base checkpoints, recognised by a key, for the error message.
OTHER_MODELS = (
    ("model.diffusion_model.joint_blocks.", "a Stable Diffusion 3 checkpoint"),
    ("model.diffusion_model.double_blocks.", "a Flux checkpoint"),
    ("double_blocks.", "a Flux diffusion model"),
    ("joint_blocks.", "an SD3 diffusion model"),
    ("control_model.", "a ControlNet training checkpoint"),
    ("zero_convs.", "a ControlNet"),
    ("controlnet_cond_embedding.", "a diffusers ControlNet"),
    ("lora_unet_", "a LoRA"),
    ("encoder.down.", "a VAE"),
)
TRAIN_EXTRA_HINT = "install the training extra: pip install 'comfyui-controlnet-pack[train]' (diffusers, transformers)"


def require_train_dependencies() -> None:
    missing = []
    for module in ("diffusers", "transformers"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"training from a checkpoint file needs {' and '.join(missing)}: {TRAIN_EXTRA_HINT}")


@dataclass
class BaseCheckpointInfo:
    path: Path
    family: str
    encoder: ControlNetConfig           # the UNet encoder, as a ControlNet of it would be
    unet_params: dict                   # ldm `unet_config.params`
    vae_params: dict                    # ldm `ddconfig`
    text_encoders: tuple = ()
    keys: frozenset[str] = field(default_factory=frozenset)


def _count(keys, prefix: str) -> int:
    indices = {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}
    return len({i for i in indices if i.isdigit()})


def _vae_params(shapes: Mapping[str, tuple[int, ...]], source: str) -> dict:
    def shape(key: str) -> tuple[int, ...]:
        if VAE_PREFIX + key not in shapes:
            raise CheckpointError(f"{source}: the VAE lacks {VAE_PREFIX + key}; the file is truncated or not a "
                                  "standard SD checkpoint")
        return shapes[VAE_PREFIX + key]

    channels = shape("encoder.conv_in.weight")[0]
    levels = _count(shapes, VAE_PREFIX + "encoder.down.")
    mult = [shape(f"encoder.down.{i}.block.0.conv2.weight")[0] // channels for i in range(levels)]
    return {"double_z": True, "z_channels": shape("decoder.conv_in.weight")[1], "resolution": 256,
            "in_channels": shape("encoder.conv_in.weight")[1], "out_ch": shape("decoder.conv_out.weight")[0],
            "ch": channels, "ch_mult": mult, "num_res_blocks": _count(shapes, VAE_PREFIX + "encoder.down.0.block."),
            "attn_resolutions": [], "dropout": 0.0}


def _unet_params(config: ControlNetConfig, out_channels: int) -> dict:
    levels = len(config.channel_mult)
    first_blocks = [sum(config.num_res_blocks[:level]) for level in range(levels)]
    depth_per_level = [config.transformer_depth[i] for i in first_blocks]
    attention_levels = [level for level in range(levels) if depth_per_level[level] > 0]
    # diffusers gives the middle block the last entry of this list; levels without attention ignore theirs.
    middle = config.transformer_depth_middle
    if depth_per_level[-1] > 0 and depth_per_level[-1] != middle:
        raise CheckpointError(f"UNet with {depth_per_level[-1]} transformer blocks at its deepest level but {middle} "
                              "in the middle block: not a layout diffusers can build")
    depth_per_level = [depth if depth > 0 else max(middle, 1) for depth in depth_per_level]
    params = {
        "in_channels": config.in_channels, "out_channels": out_channels, "model_channels": config.model_channels,
        "attention_resolutions": [2 ** level for level in attention_levels],
        "num_res_blocks": config.num_res_blocks[0], "channel_mult": list(config.channel_mult),
        "use_linear_in_transformer": config.use_linear_projection, "transformer_depth": depth_per_level,
        "context_dim": config.context_dim,
    }
    if config.num_heads is not None:
        params["num_heads"] = config.num_heads
    else:
        params["num_head_channels"] = config.num_head_channels
    if config.adm_in_channels is not None:
        params.update(num_classes="sequential", adm_in_channels=config.adm_in_channels)
    return params


def inspect_base_checkpoint(path: str | os.PathLike, *, overrides: Mapping[str, object] | None = None
                            ) -> BaseCheckpointInfo:
    """What the base checkpoint is, from its header: CheckpointError unless it is a full SD1.x/SDXL checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"base model {path} is a folder; expected a single-file checkpoint "
                              "(.safetensors or .ckpt, as kept in ComfyUI's models/checkpoints)")
    shapes = {k: s for k, (s, _) in read_tensor_shapes(path).items()}
    keys = list(shapes)
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in shapes:
        what = next((name for marker, name in OTHER_MODELS if any(k.startswith(marker) for k in keys)), None)
        if what is None and "input_blocks.0.0.weight" in shapes:
            what = "a UNet-only file (no VAE or text encoder)"
        raise CheckpointError(f"{path} is {what or 'not a Stable Diffusion checkpoint'}: training needs a full "
                              f"single-file SD1.x or SDXL checkpoint (UNet under {UNET_PREFIX!r}, VAE, text encoder)")
    encoder = {k[len(UNET_PREFIX):]: s for k, s in shapes.items()
               if k.startswith(UNET_PREFIX) and k[len(UNET_PREFIX):].startswith(UNET_ENCODER_PREFIXES)}
    # A base has no hint block: describe the released one (stages 16, 32, 96, 256 into model_channels) so
    # the encoder's config can be read with the ControlNet's own inference.
    stages = ControlNetConfig.hint_block_channels
    model_channels = encoder["input_blocks.0.0.weight"][0]  # present: checked above
    widths = [width for stage in stages for width in (stage, stage)][:-1] + [model_channels]
    previous = 3
    for index, width in enumerate(widths):
        encoder[f"input_hint_block.{2 * index}.weight"] = (width, previous, 3, 3)
        previous = width
    config = infer_config(encoder, str(path), overrides)
    adm, context = config.adm_in_channels, config.context_dim
    if adm is not None and context != 2048:
        raise CheckpointError(f"{path} is an SDXL refiner-like model (context {context}, adm {adm}): ControlNet "
                              "training supports SD1.x and SDXL base models")
    if config.family not in SUPPORTED_FAMILIES:
        raise CheckpointError(f"{path} is an {config.family.upper()} model (text context {context}): training "
                              f"from a checkpoint file supports {' and '.join(f.upper() for f in SUPPORTED_FAMILIES)}")
    if config.in_channels != 4:
        raise CheckpointError(f"{path} has a {config.in_channels}-channel UNet input (an inpainting or "
                              "instruction model); ControlNets are trained on a 4-channel base model")
    out_key = f"{UNET_PREFIX}out.2.weight"
    if out_key not in shapes:
        raise CheckpointError(f"{path}: the UNet lacks its output layer {out_key}; the file is truncated")
    missing = [prefix for _, prefix, _ in TEXT_ENCODERS[config.family]
               if not any(k.startswith(prefix) for k in keys)]
    if missing:
        raise CheckpointError(f"{path}: no text encoder weights under {missing}; training needs the checkpoint's "
                              "own text encoder(s)")
    return BaseCheckpointInfo(path=path, family=config.family, encoder=config,
                              unet_params=_unet_params(config, shapes[out_key][0]), vae_params=_vae_params(shapes, str(path)),
                              text_encoders=TEXT_ENCODERS[config.family], keys=frozenset(keys))


def guess_prediction_type(info: BaseCheckpointInfo) -> str:
    """v-prediction checkpoints of these families carry a `v_pred` marker key (as the host reads it)."""
    return "v_prediction" if "v_pred" in info.keys else "epsilon"


def find_tokenizer(explicit: str | os.PathLike | None = None) -> Path:
    """The folder with CLIP's vocab.json and merges.txt: `explicit`, else the host's bundled
    tokenizer when this pack sits in ComfyUI/custom_nodes/."""
    if explicit is not None:
        folder = Path(explicit).expanduser()
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            raise InputError(f"tokenizer folder {folder} lacks {', '.join(missing)}: expected a CLIP tokenizer "
                             "folder (e.g. ComfyUI/comfy/sd1_tokenizer, or the tokenizer/ folder of a diffusers "
                             "Stable Diffusion model)")
        return folder
    pack = Path(__file__).resolve().parents[2]
    candidate = pack.parent.parent / "comfy" / "sd1_tokenizer"  # ComfyUI/custom_nodes/<pack>/…
    if all((candidate / name).is_file() for name in TOKENIZER_FILES):
        return candidate
    raise InputError("the CLIP tokenizer files (vocab.json, merges.txt) are not part of single-file checkpoints: "
                     "pass --tokenizer FOLDER, e.g. ComfyUI/comfy/sd1_tokenizer or the tokenizer/ folder of a "
                     "diffusers Stable Diffusion model")


def _text_config(shapes: Mapping[str, tuple[int, ...]], prefix: str, layout: str):
    from transformers import CLIPTextConfig

    if layout == "hf":
        vocab, hidden = shapes[prefix + "embeddings.token_embedding.weight"]
        positions = shapes[prefix + "embeddings.position_embedding.weight"][0]
        layers = _count(shapes, prefix + "encoder.layers.")
        intermediate = shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]
        act, projection = "quick_gelu", hidden
    else:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, prefix + "transformer.resblocks.")
        intermediate = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        act, projection = "gelu", shapes[prefix + "text_projection"][1]
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                          max_position_embeddings=positions, hidden_act=act, projection_dim=projection,
                          bos_token_id=0, eos_token_id=min(2, vocab - 1), pad_token_id=1)


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, source: Path,
                 ignore: tuple[str, ...] = ()) -> None:
    expected = module.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(ignore))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith(ignore))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: the {what} does not match its inferred architecture (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]})")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)


def _build(cls, config, state, what, source, ignore=()):
    with torch.device("meta"):
        module = cls(config) if not isinstance(config, dict) else cls.from_config(config)
    _load_strict(module, state, what, source, ignore)
    # Buffers missing from the file (e.g. CLIP's position_ids) are still on the meta device: rebuild them.
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            leaf = name.rpartition(".")[2]
            if leaf == "position_ids":
                owner.register_buffer(leaf, torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(),
                                      persistent=False)
            else:
                raise CheckpointError(f"{source}: the {what} lacks buffer {name}")
    return module.float().eval().requires_grad_(False)


@dataclass
class BaseComponents:
    info: BaseCheckpointInfo
    unet: object                     # diffusers UNet2DConditionModel
    vae: object                      # diffusers AutoencoderKL
    text_encoders: list              # transformers CLIP text models, in TEXT_ENCODERS order
    tokenizers: list
    ldm_names: dict[str, str]        # diffusers UNet key -> original checkpoint key


def load_tokenizers(info: BaseCheckpointInfo, folder: str | os.PathLike) -> list:
    """One CLIP tokenizer per text encoder: OpenAI CLIP pads with the end token, open_clip with token 0 ("!")."""
    require_train_dependencies()
    from transformers import CLIPTokenizer

    tokenizers = []
    for _, _, layout in info.text_encoders:
        pad = "<|endoftext|>" if layout == "hf" else "!"
        try:
            tokenizers.append(CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, pad_token=pad))
        except Exception as exc:  # transformers / tokenizers raise plain Exceptions for bad vocab files
            raise InputError(f"tokenizer folder {folder}: vocab.json / merges.txt could not be read as a CLIP "
                             f"tokenizer: {exc}") from None
    return tokenizers


def load_base_checkpoint(info: BaseCheckpointInfo, tokenizers: list) -> BaseComponents:
    """UNet, VAE and text encoders of an inspected checkpoint; nothing is downloaded."""
    require_train_dependencies()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint,
                                                     create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    checkpoint = read_state_dict(info.path)
    shapes = {k: tuple(v.shape) for k, v in checkpoint.items()}
    original_config = {"model": {"params": {
        "unet_config": {"params": info.unet_params},
        "first_stage_config": {"params": {"ddconfig": info.vae_params}},
        "scale_factor": VAE_SCALE[info.family]}}}

    unet_config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    unet_state = convert_ldm_unet_checkpoint(checkpoint, unet_config)
    ldm_of = {id(v): k for k, v in checkpoint.items() if k.startswith(UNET_PREFIX)}
    ldm_names = {k: ldm_of[id(v)] for k, v in unet_state.items() if id(v) in ldm_of}
    unet = _build(UNet2DConditionModel, unet_config, unet_state, "UNet", info.path)

    vae_config = create_vae_diffusers_config_from_ldm(original_config, checkpoint,
                                                      scaling_factor=VAE_SCALE[info.family])
    vae = _build(AutoencoderKL, vae_config, convert_ldm_vae_checkpoint(checkpoint, vae_config), "VAE", info.path)

    text_encoders = []
    for name, prefix, layout in info.text_encoders:
        config = _text_config(shapes, prefix, layout)
        cls = CLIPTextModel if name == "clip_l" else CLIPTextModelWithProjection
        with torch.device("meta"):
            probe = cls(config)
        if layout == "hf":
            state = convert_ldm_clip_checkpoint(checkpoint)
        else:
            state = convert_open_clip_checkpoint(probe, checkpoint, prefix=prefix)
        if not hasattr(probe, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        text_encoders.append(_build(cls, config, state, f"text encoder {name}", info.path, ignore=("position_ids",)))
    del checkpoint
    return BaseComponents(info, unet, vae, text_encoders, tokenizers, ldm_names)
