"""identify / inspect / load_control on every control file the field passes around.

Key names and shapes come from the reference code of each system (diffusers' classes built on the
meta device where diffusers has them; otherwise written out from the released code): the
ControlNet and T2I-Adapter layouts in both formats, style adapters and CoAdapter files, the
ControlNeXt modules and UNet subset, Union, Control-LoRA, LLLite, and the SD3, Flux, Qwen-Image,
HunyuanDiT and Stable Cascade ControlNets.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import controlnet_core
from controlnet_core import CheckpointError, identify, load_control
from tests.factories import diffusers_state_dict, ldm_state_dict, make_diffusers_controlnet, make_diffusers_unet, \
    save_state_dict
from tests.test_control_lora import control_lora_and_oracle
from tests.test_controlnext import ReferenceModuleA, ReferenceModuleB
from tests.test_lllite import tiny_sdxl_lllite
from tests.test_t2i_adapter import original_layout

REPO = Path(controlnet_core.__file__).parent.parent


def t2i_keys(adapter_type: str, original: bool, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A released-size diffusers T2IAdapter's tensors on the meta device (original names if asked)."""
    from diffusers import T2IAdapter

    light = adapter_type == "light_adapter"
    kwargs = dict(in_channels=in_channels, channels=[320, 640, 1280] if light else [320, 640, 1280, 1280],
                  num_res_blocks=4 if light else 2, downscale_factor=16 if adapter_type.endswith("xl") else 8,
                  adapter_type=adapter_type)
    with torch.device("meta"):
        state = dict(T2IAdapter(**kwargs).state_dict())
    return original_layout(state, light, kwargs["num_res_blocks"]) if original else state


def tiny(*keys_and_shapes) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key, shape in keys_and_shapes}


# Written out from the released code (small shapes where only the keys matter).
STYLE = tiny(("style_embedding", (1, 8, 1024)), ("proj", (1024, 768)), ("ln_pre.weight", (1024,)),
             ("transformer_layes.0.attn.in_proj_weight", (3072, 1024)), ("ln_post.weight", (1024,)))
COADAPTER_FUSER = tiny(("task_embedding", (16, 768)), ("positional_embedding", (4, 768)),
                       ("spatial_feat_mapping.0.1.weight", (768, 320)), ("seq_proj", (768, 768)))
UNION = {**{k: torch.zeros(1) for k in ("controlnet_cond_embedding.conv_in.weight", "conv_in.weight")},
         **tiny(("task_embedding", (8, 320)), ("control_add_embedding.linear_1.bias", (1280,)),
                ("transformer_layes.0.attn.in_proj_weight", (960, 320)))}
# Incomplete files of these systems (a few keys only): recognised, and refused with the reason.
CONTROL_LORA_PART = tiny(("lora_controlnet", (1,)), ("input_blocks.1.0.in_layers.2.up", (320, 128, 1, 1)),
                         ("input_blocks.1.0.in_layers.2.down", (128, 320, 3, 3)),
                         ("zero_convs.0.0.weight", (320, 320, 1, 1)))
LLLITE_PART = tiny(("lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.conditioning1.0.weight",
                    (16, 3, 4, 4)),
                   ("lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.down.0.weight", (16, 640)),
                   ("lllite_unet_middle_block_1_transformer_blocks_0_attn2_to_q.up.0.weight", (1280, 16)))
FOREIGN = {
    "SD3 ControlNet": tiny(("controlnet_blocks.0.weight", (2,)), ("pos_embed_input.proj.weight", (2,))),
    "SD3.5 ControlNet": tiny(("controlnet_blocks.0.weight", (2,)), ("pos_embed_input.proj.weight", (2,)),
                             ("transformer_blocks.0.adaLN_modulation.1.bias", (2,))),
    "Flux XLabs": tiny(("controlnet_blocks.0.weight", (2,)), ("double_blocks.0.img_attn.norm.key_norm.scale", (2,))),
    "Flux InstantX": tiny(("controlnet_blocks.0.weight", (2,)), ("controlnet_x_embedder.weight", (2,))),
    "Flux Mistoline": tiny(("controlnet_blocks.0.linear.weight", (2,))),
    "Qwen-Image": tiny(("controlnet_blocks.0.weight", (2,)), ("transformer_blocks.0.img_mlp.net.0.proj.weight", (2,))),
    "HunyuanDiT": tiny(("before_proj.weight", (2,)), ("after_proj_list.18.bias", (2,))),
    "Stable Cascade": tiny(("backbone.0.0.weight", (2,))),
}


def cases() -> dict[str, tuple[dict, str, str, str | None, bool]]:
    """file name -> (tensors, system, variant part, family, runs here)."""
    controlnet = make_diffusers_controlnet("sd1", seed=0)
    ldm = ldm_state_dict(controlnet)
    subset = {k: v.clone() for k, v in make_diffusers_unet("sd1", seed=1).state_dict().items() if "to_out" in k}
    out = {
        "control_v11p_sd15_canny.safetensors": (ldm, "ControlNet", "sd1", "sd1", True),
        "diffusion_pytorch_model.safetensors": (diffusers_state_dict(controlnet), "ControlNet", "sd1", "sd1", True),
        "diff_control_sd15_depth_fp16.safetensors": ({**ldm, "difference": torch.zeros(1)}, "ControlNet", "diff",
                                                     "sd1", True),
        "t2iadapter_canny_sd14v1.pth": (t2i_keys("full_adapter", True, 1), "T2I-Adapter", "full", "sd1", True),
        "t2iadapter_depth_sd15v2.pth": (t2i_keys("full_adapter", True), "T2I-Adapter", "full", "sd1", True),
        "t2iadapter_color_sd14v1.pth": (t2i_keys("light_adapter", True), "T2I-Adapter", "light", "sd1", True),
        "adapter-xl-sketch.pth": (t2i_keys("full_adapter_xl", True, 1), "T2I-Adapter", "XL", "sdxl", True),
        "t2i-adapter-sdxl.safetensors": (t2i_keys("full_adapter_xl", False), "T2I-Adapter", "XL", "sdxl", True),
        "t2iadapter_color_diffusers.safetensors": (t2i_keys("light_adapter", False), "T2I-Adapter", "light", "sd1",
                                                   True),
        "t2iadapter_style_sd14v1.pth": (STYLE, "T2I-Adapter", "style", "sd1", False),
        "coadapter-fuser-sd15v1.pth": (COADAPTER_FUSER, "CoAdapter", "fuser", "sd1", False),
        "coadapter-canny-sd15v1.pth": (t2i_keys("full_adapter", True, 1), "CoAdapter", "condition adapter", "sd1",
                                       False),
        "controlnext-sdxl.safetensors": (dict(ReferenceModuleA().state_dict()), "ControlNeXt", "SDXL / SD1.5", None,
                                         True),
        "controlnext-sd15-old.safetensors": (dict(ReferenceModuleB().state_dict()), "ControlNeXt", "old", "sd1", True),
        "unet_weight_increasements.safetensors": (subset, "ControlNeXt", "UNet weight subset", "sd1", False),
        "controlnet-union-sdxl-promax.safetensors": (UNION, "Union", "ProMax", "sdxl", True),
        "control-lora-canny-rank4.safetensors": (control_lora_and_oracle("sdxl")[0], "Control-LoRA", "rank 4",
                                                  "sdxl", True),
        "control-lora-part.safetensors": (CONTROL_LORA_PART, "Control-LoRA", "unreadable", None, False),
        "kohya_controllllite_xl_canny.safetensors": (tiny_sdxl_lllite(), "LLLite", "32 attention modules", "sdxl",
                                                     True),
        "kohya_controllllite_part.safetensors": (LLLITE_PART, "LLLite", "unsupported", None, False),
    }
    families = {"SD3": "sd3", "Flux": "flux", "Qwen": "qwen-image", "Huny": "hunyuandit", "Stab": "stable-cascade"}
    for name, tensors in FOREIGN.items():
        system = {"SD3.5 ControlNet": "SD3 ControlNet", "Qwen-Image": "Qwen-Image ControlNet",
                  "HunyuanDiT": "HunyuanDiT ControlNet", "Stable Cascade": "Stable Cascade ControlNet"}.get(
            name, "Flux ControlNet" if name.startswith("Flux") else name)
        family = next(v for k, v in families.items() if name.startswith(k))
        out[name.replace(" ", "_") + ".safetensors"] = (tensors, system, "", family, False)
    return out


CASES = cases()


@pytest.mark.parametrize("file_name", sorted(CASES))
def test_identify_names_system_variant_and_family(file_name):
    tensors, system, variant, family, runs = CASES[file_name]
    from controlnet_core.systems import detect

    found = detect({k: tuple(v.shape) for k, v in tensors.items()}, file_name)
    assert found is not None, file_name
    identity = found[1]
    assert identity.system == system and variant in identity.variant
    assert identity.family == family and identity.runs_here == runs
    assert runs or identity.advice  # what to use instead


def test_diffusers_light_adapters_load_where_the_host_fails():
    """The host renames `resnets.{j}` only for j < 2 and to the full adapter's names; this loads."""
    from diffusers import T2IAdapter

    from tests.factories import randomize_

    adapter = randomize_(T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=4,
                                    adapter_type="light_adapter"), 1)
    model = load_control({k: v.clone() for k, v in adapter.state_dict().items()})
    assert model.system == "T2I-Adapter" and model.config.kind == "light" and model.config.num_res_blocks == 4


@pytest.mark.parametrize("file_name, advice", [
    ("t2iadapter_style_sd14v1.pth", "'Load Style Model'"),
    ("coadapter-fuser-sd15v1.pth", "CoAdapter fuser"),
    ("control-lora-part.safetensors", "missing tensor"),
    ("kohya_controllllite_part.safetensors", "incomplete"),
    ("Flux_XLabs.safetensors", "diffusion transformer"),
    ("unet_weight_increasements.safetensors", "second input"),
])
def test_files_the_pack_does_not_run_are_refused_with_what_to_use(file_name, advice, tmp_path):
    tensors = CASES[file_name][0]
    path = save_state_dict({k: v.contiguous() for k, v in tensors.items()},
                           tmp_path / file_name.replace(".pth", ".safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_control(path)
    assert CASES[file_name][1] in str(error.value) and advice in str(error.value)


def test_inspect_exits_0_and_names_the_system_first_for_every_file(tmp_path):
    paths, systems = [], []
    for file_name, (tensors, system, *_rest) in sorted(CASES.items()):
        state = {k: (torch.zeros(v.shape) if v.is_meta else v).contiguous() for k, v in tensors.items()}
        if sum(v.numel() for v in state.values()) > 3e7:  # released-size adapters: inspect reads headers only
            state = {k: torch.zeros(1).expand(v.shape) for k, v in state.items()}
            state = {k: v.contiguous() for k, v in state.items()}
        paths.append(str(save_state_dict(state, tmp_path / file_name.replace(".pth", ".safetensors"))))
        systems.append(system)
    result = subprocess.run([sys.executable, "-m", "controlnet_core", "inspect", *paths], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    reports = result.stdout.strip().split("\n\n")
    assert [report.splitlines()[0] for report in reports] == systems
    assert all("runs here:" in report and "base model:" in report for report in reports)


def test_inspect_exits_1_for_unknown_and_missing_files(tmp_path):
    junk = save_state_dict({"weight": torch.zeros(2)}, tmp_path / "junk.safetensors")
    checkpoint = save_state_dict({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)},
                                 tmp_path / "v1-5.safetensors")
    result = subprocess.run([sys.executable, "-m", "controlnet_core", "inspect", str(junk), str(checkpoint),
                             str(tmp_path / "nope.safetensors")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "not a control model this pack knows" in result.stderr
    assert "Stable Diffusion model checkpoint" in result.stderr and "nope.safetensors" in result.stderr
