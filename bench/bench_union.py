"""Union ControlNet: pose + depth in one pass (ours) vs the host's two chained passes, in one process.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_union.py \
        [--latent 32 --calls 8 --oracle-python .venv/bin/python]

One Union ProMax file (8 types) in the released diffusers layout, SDXL widths (320/640/1280) with
the reduced "mid" depth the host's own loader recognises (SDXL_mid_cnet: one transformer block per
level-3 res block and in the middle block), random weights. Host: its loader, SetUnionControlNetType
(openpose, then depth) and two chained ControlNetApplyAdvanced: two full ControlNet forwards per
step. Ours: our loader, the same type node, one MultiControlStack with both entries: one forward.

Both control objects run get_control on the same inputs (cond + uncond batch 2, the sigmas of a
schedule), alternately, first one then the other, order swapped every call. The UNet call itself
is the same with either, so the control time per step is the overhead per step. Reported: median
per-call times and the median of the per-pair ratios (ours / host).

Parity while timing: the single-type residuals against the host's (pose alone, same file), and the
fused pose + depth residuals against diffusers' ControlNetUnionModel (the oracle), run by
--oracle-python (a python with diffusers, e.g. the pack's .venv) on the same file and inputs.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))

# The host's SDXL_mid_cnet layout (comfy/model_detection.py): its loader detects it from the file.
SDXL_MID = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
            "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 0, 0, 1, 1],
            "channel_mult": [1, 2, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
            "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1],
            "use_temporal_attention": False, "use_temporal_resblock": False}
# The same network as diffusers' ControlNetUnionModel arguments (for the oracle).
DIFFUSERS_MID = dict(block_out_channels=(320, 640, 1280),
                     down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                     layers_per_block=2, transformer_layers_per_block=(0, 0, 1), cross_attention_dim=2048,
                     attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                     conditioning_embedding_out_channels=(16, 32, 96, 256), num_control_type=8)
STRENGTHS = {"openpose": 0.8, "depth": 0.5}


def sdxl_y(text: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """Pooled text + a 256-wide [cos | sin] embedding of each of the 6 time ids (the host's encode_adm)."""
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = time_ids.flatten()[:, None] * freqs[None]
    return torch.cat([text, torch.cat([torch.cos(args), torch.sin(args)], -1).reshape(text.shape[0], -1)], -1)


def residual_list(control: dict) -> list[torch.Tensor]:
    return list(control["output"]) + list(control["middle"])


def relative_error(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, theirs))


def oracle(folder: Path) -> None:
    """Run in a python with diffusers: the fused residuals of ControlNetUnionModel on the saved inputs."""
    from diffusers import ControlNetUnionModel
    from safetensors.torch import load_file

    saved = load_file(str(folder / "inputs.safetensors"))
    model = ControlNetUnionModel(**DIFFUSERS_MID)
    model.load_state_dict(load_file(str(folder / "union.safetensors")), strict=True)
    model.eval()
    hints = [saved["image_openpose"].movedim(-1, 1).expand(2, -1, -1, -1),
             saved["image_depth"].movedim(-1, 1).expand(2, -1, -1, -1)]
    control_type = torch.zeros(2, 8)
    control_type[:, [0, 1]] = 1.0
    with torch.no_grad():
        down, mid = model(saved["x"], saved["timesteps"], saved["context"], controlnet_cond=hints,
                          control_type=control_type, control_type_idx=[0, 1],
                          conditioning_scale=[STRENGTHS["openpose"], STRENGTHS["depth"]],
                          added_cond_kwargs={"text_embeds": saved["text"], "time_ids": saved["time_ids"]},
                          return_dict=False)
    ours = [saved[f"ours_{i}"] for i in range(len(down) + 1)]
    print(json.dumps({"fused_vs_diffusers_relative_error": relative_error(ours, list(down) + [mid])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=32, help="latent side (image = 8×)")
    parser.add_argument("--calls", type=int, default=8, help="get_control calls per side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--oracle-python", help="a python with diffusers for the fused-result oracle")
    parser.add_argument("--oracle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.oracle:
        return oracle(args.oracle)
    torch.set_num_threads(args.threads)

    import host_env
    from safetensors.torch import save_file
    from weights import union_diffusers_state_dict

    host_env.import_comfy(host_env.comfyui_path())
    import comfy.controlnet
    import comfy.model_base
    import comfy.supported_models
    import folder_paths
    import nodes as host_nodes
    from comfy_extras.nodes_controlnet import SetUnionControlNetType

    pack = host_env.import_pack_in_process()
    ours_nodes = pack.nodes.controlnet_nodes
    folder = Path(tempfile.mkdtemp(prefix="bench-union-"))
    path = folder / "union.safetensors"
    save_file(union_diffusers_state_dict(SDXL_MID, types=8, seed=11), str(path))
    folder_paths.add_model_folder_path("controlnet", str(folder))
    set_type = lambda net, name: SetUnionControlNetType().set_controlnet_type(net, name)[0]  # noqa: E731

    model_config = comfy.supported_models.SDXL(dict(SDXL_MID))
    sampling = comfy.model_base.model_sampling(model_config, comfy.model_base.ModelType.EPS)
    base = type("Base", (), {"model_sampling": sampling, "model_config": model_config})()
    size = args.latent * 8
    generator = torch.Generator().manual_seed(0)
    images = {name: torch.rand(1, size, size, 3, generator=generator) for name in STRENGTHS}
    x = torch.randn(2, 4, args.latent, args.latent, generator=generator)
    context = torch.randn(2, 77, 2048, generator=generator)
    text = torch.randn(2, 1280, generator=generator)
    time_ids = torch.tensor([[float(size), float(size), 0.0, 0.0, float(size), float(size)]]).repeat(2, 1)
    cond = {"c_crossattn": context, "y": sdxl_y(text, time_ids)}

    def conditioning():
        return [[torch.zeros(1, 77, 2048), {"pooled_output": None}]]

    host_net = comfy.controlnet.load_controlnet(str(path))
    apply_host = host_nodes.ControlNetApplyAdvanced().apply_controlnet
    positive, negative = conditioning(), conditioning()
    for name, strength in STRENGTHS.items():
        positive, negative = apply_host(positive, negative, set_type(host_net, name), images[name], strength, 0.0, 1.0)
    host_control = positive[0][1]["control"]
    host_pose = apply_host(conditioning(), conditioning(), set_type(host_net, "openpose"), images["openpose"],
                           STRENGTHS["openpose"], 0.0, 1.0)[0][0][1]["control"]

    our_net, = ours_nodes.LoadControlNet().load(path.name)
    slots = {}
    for slot, name in enumerate(STRENGTHS, start=1):
        slots.update({f"enabled_{slot}": True, f"strength_{slot}": STRENGTHS[name], f"start_percent_{slot}": 0.0,
                      f"end_percent_{slot}": 1.0, f"control_mode_{slot}": "balanced",
                      f"control_net_{slot}": set_type(our_net, name), f"image_{slot}": images[name]})
    slots.update({"enabled_3": False, "strength_3": 1.0, "start_percent_3": 0.0, "end_percent_3": 1.0,
                  "control_mode_3": "balanced"})
    our_control = ours_nodes.MultiControlStack().apply(conditioning(), conditioning(), None, **slots)[0][0][1]["control"]
    our_pose = ours_nodes.ApplyControlNet().apply(conditioning(), conditioning(), set_type(our_net, "openpose"),
                                                  images["openpose"], STRENGTHS["openpose"], 0.0, 1.0)[0][0][1]["control"]

    for control in (host_control, host_pose, our_control, our_pose):
        control.pre_run(base, lambda p: sampling.percent_to_sigma(p))
    sigmas = [float(sampling.percent_to_sigma(i / args.calls)) for i in range(args.calls)]
    times = {"host": [], "ours": []}
    results = {}
    with torch.inference_mode():
        for control, name in ((host_control, "host"), (our_control, "ours")):  # warm-up (hint caches, allocator)
            control.get_control(x, torch.full((2,), sigmas[0]), cond, 2, {"cond_or_uncond": [0, 1]})
        for index, sigma in enumerate(sigmas):
            t = torch.full((2,), sigma)
            order = (("host", host_control), ("ours", our_control))
            for name, control in (order if index % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                results[name] = control.get_control(x, t, cond, 2, {"cond_or_uncond": [0, 1]})
                times[name].append(time.perf_counter() - started)
        t = torch.full((2,), sigmas[len(sigmas) // 2])
        single = relative_error(residual_list(our_pose.get_control(x, t, cond, 2, {"cond_or_uncond": [0, 1]})),
                                residual_list(host_pose.get_control(x, t, cond, 2, {"cond_or_uncond": [0, 1]})))
        fused = residual_list(our_control.get_control(x, t, cond, 2, {"cond_or_uncond": [0, 1]}))
        x_in, timesteps = sampling.calculate_input(t, x), sampling.timestep(t)
    ratios = [o / h for o, h in zip(times["ours"], times["host"])]
    report = {"latent": args.latent, "calls": args.calls, "threads": args.threads,
              "host_two_passes_s": statistics.median(times["host"]), "ours_one_pass_s": statistics.median(times["ours"]),
              "ratio_median_of_pairs": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
              "single_type_vs_host_relative_error": single}
    print(json.dumps(report, indent=1))
    try:
        if args.oracle_python:
            saved = {"x": x_in, "timesteps": timesteps, "context": context, "text": text, "time_ids": time_ids,
                     "image_openpose": images["openpose"], "image_depth": images["depth"],
                     **{f"ours_{i}": r for i, r in enumerate(fused)}}
            save_file({k: v.contiguous() for k, v in saved.items()}, str(folder / "inputs.safetensors"))
            subprocess.run([args.oracle_python, __file__, "--oracle", str(folder)], check=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
