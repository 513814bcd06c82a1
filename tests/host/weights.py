"""Random-weight model files the real host recognises, for host tests and the host benchmark.

The host only loads real architectures, so the SD1.5 checkpoint (UNet + CLIP-L + VAE) and the
ControlNets are full size; tensor names and shapes come from the host's own module classes built
on the meta device, values from a seeded generator. Runs in the host's venv (imports comfy), and
needs `comfy.options.enable_args_parsing()` with `--cpu` in sys.argv before any comfy import
(see host_env.import_comfy).

Scales: weights N(0, 1/fan_in) keep activations O(1) through the random network; norm gains near
1; zero convs are NOT zero (a fresh ControlNet adds nothing, which would make parity trivial).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False,
                 context_dim=768, num_heads=8, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
                 use_temporal_attention=False, use_temporal_resblock=False)
# An SDXL-family ControlNet at reduced width (real context 2048 and adm 2816, so loaders see SDXL).
SDXL_SMALL_CONTROLNET = dict(image_size=32, in_channels=4, model_channels=64, num_res_blocks=[2, 2, 2],
                             channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                             use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                             num_classes="sequential", adm_in_channels=2816, use_spatial_transformer=True, legacy=False)
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

# ControlNeXt's module A (ControlNeXt-SDXL/models/controlnet.py and the new SD1.5 recipe), as released:
# module name -> shape. diffusers' ResnetBlock2D / Downsample2D names; 52 tensors.
CONTROLNEXT_MODULE_A = {
    "time_embedding.linear_1.weight": (256, 128), "time_embedding.linear_1.bias": (256,),
    "time_embedding.linear_2.weight": (256, 256), "time_embedding.linear_2.bias": (256,),
    "embedding.0.weight": (64, 3, 3, 3), "embedding.0.bias": (64,), "embedding.1.weight": (64,),
    "embedding.1.bias": (64,), "embedding.3.weight": (64, 64, 3, 3), "embedding.3.bias": (64,),
    "embedding.4.weight": (64,), "embedding.4.bias": (64,), "embedding.6.weight": (128, 64, 3, 3),
    "embedding.6.bias": (128,), "embedding.7.weight": (128,), "embedding.7.bias": (128,),
    **{f"down_res.{i}.{name}": shape for i, (cin, cout) in enumerate(((128, 128), (128, 256))) for name, shape in (
        ("norm1.weight", (cin,)), ("norm1.bias", (cin,)), ("conv1.weight", (cout, cin, 3, 3)), ("conv1.bias", (cout,)),
        ("time_emb_proj.weight", (cout, 256)), ("time_emb_proj.bias", (cout,)), ("norm2.weight", (cout,)),
        ("norm2.bias", (cout,)), ("conv2.weight", (cout, cout, 3, 3)), ("conv2.bias", (cout,)))},
    "down_res.1.conv_shortcut.weight": (256, 128, 1, 1), "down_res.1.conv_shortcut.bias": (256,),
    "down_sample.0.conv.weight": (128, 128, 3, 3), "down_sample.0.conv.bias": (128,),
    "down_sample.1.conv.weight": (256, 256, 3, 3), "down_sample.1.conv.bias": (256,),
    "mid_convs.0.0.weight": (256, 256, 3, 3), "mid_convs.0.0.bias": (256,), "mid_convs.0.2.weight": (256,),
    "mid_convs.0.2.bias": (256,), "mid_convs.0.3.weight": (256, 256, 3, 3), "mid_convs.0.3.bias": (256,),
    "mid_convs.0.4.weight": (256,), "mid_convs.0.4.bias": (256,), "mid_convs.1.weight": (320, 256, 1, 1),
    "mid_convs.1.bias": (320,),
}


def sd15_to_out_shapes() -> dict[str, tuple[int, ...]]:
    """Every attention `to_out` of the SD1.5 UNet in diffusers names (the new SD1.5 ControlNeXt
    recipe fine-tunes exactly these): down blocks 0-2 and up blocks 1-3 have attentions (2 and 3 per
    block), at 320/640/1280 channels; plus the mid block's."""
    shapes = {}
    widths = (320, 640, 1280)
    blocks = [(f"down_blocks.{i}.attentions.{j}", widths[i]) for i in range(3) for j in range(2)]
    blocks += [(f"up_blocks.{i}.attentions.{j}", widths[3 - i]) for i in range(1, 4) for j in range(3)]
    blocks.append(("mid_block.attentions.0", 1280))
    for prefix, width in blocks:
        for attention in ("attn1", "attn2"):
            key = f"{prefix}.transformer_blocks.0.{attention}.to_out.0"
            shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (width, width), (width,)
    return shapes


CHECKPOINT = "sd15_random.safetensors"
CONTROLNETS = {"pose": "sd15_pose_random.safetensors", "depth": "sd15_depth_random.safetensors"}
SDXL_CONTROLNET = "sdxl_small_random.safetensors"
FORMAT_VERSION = 2  # bump when anything here changes; the cache is rebuilt


def random_like_shapes(shapes: dict[str, torch.Size], seed: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith("position_ids"):
            out[name] = torch.arange(shape[-1]).expand(shape).clone()
            continue
        if len(shape) == 1:
            is_gain = any(part in name for part in ("norm", "ln_", "layer_norm", "gamma")) and name.endswith("weight")
            values = torch.randn(shape, generator=generator) * 0.02 + (1.0 if is_gain else 0.0)
        elif len(shape) == 0:
            values = torch.tensor(1.0)
        else:
            fan_in = math.prod(shape[1:])
            values = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        out[name] = values.to(dtype).contiguous()
    return out


def _meta_shapes(build) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = build()
    return {k: v.shape for k, v in module.state_dict().items()}


def checkpoint_shapes() -> dict[str, torch.Size]:
    import comfy.cldm.cldm  # noqa: F401  (import order: model modules need comfy.ops first)
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip

    ops = comfy.ops.disable_weight_init
    unet = _meta_shapes(lambda: openaimodel.UNetModel(**SD15_UNET, operations=ops))
    clip = _meta_shapes(lambda: comfy.sd1_clip.SDClipModel(device="meta"))
    vae = _meta_shapes(lambda: comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4))
    shapes = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    shapes.update({f"cond_stage_model.{k}": v for k, v in clip.items()
                   if not k.endswith(("text_projection.weight", "logit_scale"))})
    shapes.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    return shapes


def controlnet_shapes(config: dict) -> dict[str, torch.Size]:
    import comfy.cldm.cldm
    import comfy.ops

    return _meta_shapes(lambda: comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init,
                                                          **config))


SYSTEM_FILES = {"t2i_full": "t2i_full_sd15_random.safetensors", "t2i_light": "t2i_light_sd15_random.safetensors",
                "t2i_light_diffusers": "t2i_light_diffusers_random.safetensors",
                "controlnext": "controlnext_sd15_random.safetensors",
                "controlnext_unet": "controlnext_sd15_unet_weight_increasements_random.safetensors"}
SYSTEMS_VERSION = 1


def ensure_system_weights(folder: Path) -> dict[str, Path]:
    """T2I-Adapter (full and light SD1.5, the light one also in the diffusers layout) and ControlNeXt
    (module A and an SD1.5 UNet weight subset of deltas) files, created once."""
    import comfy.t2i_adapter.adapter as adapter

    paths = {key: folder / name for key, name in SYSTEM_FILES.items()}
    marker = folder / "systems.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == SYSTEMS_VERSION and \
            all(p.exists() for p in paths.values()):
        return paths
    full = _meta_shapes(lambda: adapter.Adapter(cin=192, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1,
                                                sk=True, use_conv=False, xl=False))
    light = _meta_shapes(lambda: adapter.Adapter_light(cin=192, channels=[320, 640, 1280, 1280], nums_rb=4))
    save_file(random_like_shapes(full, seed=30, dtype=torch.float32), str(paths["t2i_full"]))
    light_tensors = random_like_shapes(light, seed=31, dtype=torch.float32)
    save_file(light_tensors, str(paths["t2i_light"]))
    # diffusers' light layout: body.{i}.body.{j} -> adapter.body.{i}.resnets.{j}, everything under adapter.
    diffusers_light = {"adapter." + re.sub(r"^body\.(\d+)\.body\.", r"body.\1.resnets.", k): v
                       for k, v in light_tensors.items()}
    save_file(diffusers_light, str(paths["t2i_light_diffusers"]))
    save_file(random_like_shapes(CONTROLNEXT_MODULE_A, seed=32, dtype=torch.float32), str(paths["controlnext"]))
    deltas = {k: v * 0.05 for k, v in random_like_shapes(sd15_to_out_shapes(), seed=33, dtype=torch.float32).items()}
    save_file(deltas, str(paths["controlnext_unet"]))
    marker.write_text(json.dumps({"version": SYSTEMS_VERSION}))
    return paths


LORA_LLLITE_FILES = {"control_lora": "control_lora_rank8_sd15_random.safetensors",
                     "lllite": "lllite_sd15_random.safetensors", "lora": "lora_sd15_random.safetensors"}
LORA_LLLITE_VERSION = 1
CONTROL_LORA_UNET_PARTS = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")
# An LLLite file laid out for SD1.5's transformer blocks (kohya's depth rule: input blocks ≤ 2 at the
# latent size, 4-5 at 1/2, 7-8 at 1/4; SD1.5's middle block sits at 1/8, which no depth reaches).
LLLITE_SD15_BLOCKS = {1: (1, 320), 2: (1, 320), 4: (2, 640), 5: (2, 640), 7: (3, 1280), 8: (3, 1280)}
# A LoRA for the model (kohya names) on attention projections of the encoder the Control-LoRA copies.
LORA_TARGETS = {"input_blocks_1_1_transformer_blocks_0_attn1_to_q": 320, "input_blocks_4_1_transformer_blocks_0_attn1_to_k": 640,
                "input_blocks_7_1_transformer_blocks_0_attn1_to_v": 1280, "middle_block_1_transformer_blocks_0_attn1_to_q": 1280}


def write_control_lora(path: Path, rank: int, seed: int = 40) -> Path:
    """A full-size SD1.5 Control-LoRA of `rank` in Stability's layout (random values, fp32)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = controlnet_shapes({k: v for k, v in SD15_UNET.items() if k != "out_channels"})
    full = random_like_shapes({k: v for k, v in shapes.items() if not (
        k.startswith(CONTROL_LORA_UNET_PARTS) and len(v) >= 2)}, seed=seed + 1, dtype=torch.float32)
    control_lora = {"lora_controlnet": torch.zeros(1), **full}
    for key, shape in shapes.items():
        if key.startswith(CONTROL_LORA_UNET_PARTS) and len(shape) >= 2:
            module, fan_in = key[:-len(".weight")], math.prod(shape[1:])
            r = min(rank, shape[0], fan_in)
            control_lora[module + ".up"] = 0.2 * torch.randn(shape[0], r, *([1] * (len(shape) - 2)),
                                                             generator=generator) * math.sqrt(8 / r)
            control_lora[module + ".down"] = torch.randn(r, *shape[1:], generator=generator) / math.sqrt(fan_in)
    save_file({k: v.contiguous() for k, v in control_lora.items()}, str(path))
    return path


def ensure_lora_lllite_weights(folder: Path) -> dict[str, Path]:
    """A rank-8 SD1.5 Control-LoRA (Stability's layout: up/down for every ≥2-D UNet-copy weight, the
    rest in full), an SD1.5-shaped LLLite file (kohya's layout) and a LoRA for the model, created once."""
    paths = {key: folder / name for key, name in LORA_LLLITE_FILES.items()}
    marker = folder / "lora_lllite.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == LORA_LLLITE_VERSION and \
            all(p.exists() for p in paths.values()):
        return paths
    write_control_lora(paths["control_lora"], rank=8)
    generator = torch.Generator().manual_seed(40)
    lllite = {}
    for block, (depth, width) in LLLITE_SD15_BLOCKS.items():
        for projection in ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_q"):
            name = f"lllite_unet_input_blocks_{block}_1_transformer_blocks_0_{projection}"
            convs = [(16, 3, 4)] + {1: [(32, 16, 2)], 2: [(32, 16, 4)], 3: [(16, 16, 4), (32, 16, 2)]}[depth]
            for index, (cout, cin, kernel) in enumerate(convs):
                lllite[f"{name}.conditioning1.{2 * index}.weight"] = torch.randn(
                    cout, cin, kernel, kernel, generator=generator) / math.sqrt(cin * kernel * kernel)
                lllite[f"{name}.conditioning1.{2 * index}.bias"] = 0.1 * torch.randn(cout, generator=generator)
            for part, (cout, cin) in (("down", (64, width)), ("mid", (64, 96)), ("up", (width, 64))):
                lllite[f"{name}.{part}.0.weight"] = torch.randn(cout, cin, generator=generator) / math.sqrt(cin)
                lllite[f"{name}.{part}.0.bias"] = 0.1 * torch.randn(cout, generator=generator)
    save_file(lllite, str(paths["lllite"]))
    lora = {}
    for name, width in LORA_TARGETS.items():
        lora[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, width, generator=generator) / math.sqrt(width)
        lora[f"lora_unet_{name}.lora_up.weight"] = 0.5 * torch.randn(width, 4, generator=generator)
        lora[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    save_file(lora, str(paths["lora"]))
    marker.write_text(json.dumps({"version": LORA_LLLITE_VERSION}))
    return paths


def ensure_weights(folder: Path) -> dict[str, Path]:
    """Create (once; cached by FORMAT_VERSION) the checkpoint and ControlNet files in `folder`, and the
    other systems' files (ensure_system_weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": folder / CHECKPOINT, "sdxl": folder / SDXL_CONTROLNET}
    paths.update({key: folder / name for key, name in CONTROLNETS.items()})
    marker = folder / "complete.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == FORMAT_VERSION and \
            all(p.exists() for p in paths.values()):
        return {**paths, **ensure_system_weights(folder), **ensure_lora_lllite_weights(folder)}
    save_file(random_like_shapes(checkpoint_shapes(), seed=1), str(paths["checkpoint"]))
    control = controlnet_shapes({k: v for k, v in SD15_UNET.items() if k != "out_channels"})
    for seed, key in enumerate(CONTROLNETS, start=10):
        tensors = random_like_shapes(control, seed=seed)
        save_file({f"control_model.{k}": v for k, v in tensors.items()}, str(paths[key]))
    sdxl = random_like_shapes(controlnet_shapes(SDXL_SMALL_CONTROLNET), seed=20)
    save_file({f"control_model.{k}": v for k, v in sdxl.items()}, str(paths["sdxl"]))
    marker.write_text(json.dumps({"version": FORMAT_VERSION}))
    return {**paths, **ensure_system_weights(folder), **ensure_lora_lllite_weights(folder)}


# ---- Union ControlNets (xinsir ControlNet++) ------------------------------------------------------------

UNION_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


def union_diffusers_state_dict(config: dict, types: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Union ControlNet of the host's ldm `config` (plus `types` control types) with random
    weights, in the released diffusers layout: the host's own module, its names mapped back with
    the host's diffusers table (comfy.utils.unet_to_diffusers and the ControlNet-only parts its
    loader adds). Task embedding ~ N(0, 320) as the released init."""
    import comfy.cldm.cldm
    import comfy.utils

    network = comfy.cldm.cldm.ControlNet(hint_channels=3, union_controlnet_num_control_type=types,
                                         **{k: v for k, v in config.items() if k != "out_channels"})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in sorted(network.state_dict().items()):
        if name == "task_embedding":
            values = torch.randn(param.shape, generator=generator) * math.sqrt(param.shape[1])
        elif param.ndim >= 2:
            values = torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel())
        else:
            gain = name.endswith("weight") and any(p in name for p in ("norm", "ln_", "in_layers.0", "out_layers.0"))
            values = torch.randn(param.shape, generator=generator) * 0.05 + (1.0 if gain else 0.0)
        state[name] = values
    to_ldm = comfy.utils.unet_to_diffusers(dict(config))
    to_ldm.update({f"controlnet_mid_block.{s}": f"middle_block_out.0.{s}" for s in ("weight", "bias")})
    zero_convs = 1 + sum(config["num_res_blocks"]) + len(config["channel_mult"]) - 1
    for i in range(zero_convs):
        to_ldm.update({f"controlnet_down_blocks.{i}.{s}": f"zero_convs.{i}.0.{s}" for s in ("weight", "bias")})
    for index, name in enumerate(["conv_in"] + [f"blocks.{k}" for k in range(6)] + ["conv_out"]):
        to_ldm.update({f"controlnet_cond_embedding.{name}.{s}": f"input_hint_block.{2 * index}.{s}"
                       for s in ("weight", "bias")})
    # label_emb is reachable from two diffusers names; SDXL files use add_embedding.
    to_diffusers = {ldm: diff for diff, ldm in to_ldm.items() if not diff.startswith("class_embedding.")}
    out = {}
    for key, value in state.items():
        if key.startswith(UNION_PREFIXES):
            out[key.replace(".attn.in_proj.", ".attn.in_proj_")] = value
        else:
            out[to_diffusers[key]] = value  # KeyError: a name the host's table does not cover
    return {k: v.contiguous() for k, v in out.items()}
