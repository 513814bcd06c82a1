"""Control-LoRA inside the real host: ours against the host's own ControlLora, same file and inputs.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_control_lora_host.py [--rank 128]

Full-size SD1.5 shapes with random weights (tests/host/weights.py), a Control-LoRA of the given rank
(Stability's files: 128 or 256), 256×256 (latent 32×32), cond + uncond in one call. Measured:

- build per run: the host's ControlLora.pre_run (a ControlNet shell, the UNet's tensors set in)
  against ours (the ControlNet built once: every W + up·down merged), median of --runs;
- get_control per call, host and ours alternately on identical inputs (bench_host's
  interleaved_get_control): the host recomputes W + up·down in every layer on every call, ours
  runs the merged ControlNet; median ratio and the residuals' relative max difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import host_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3, help="per-run builds timed per side")
    parser.add_argument("--calls", type=int, default=6, help="interleaved get_control calls per side")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    files = host_env.host_for_bench()
    import torch

    import nodes as host_nodes
    import weights
    from bench_host import interleaved_get_control

    lora_path = files["pose"].parent / f"control_lora_rank{args.rank}_sd15_random.safetensors"  # a model folder
    if not lora_path.exists():
        weights.write_control_lora(lora_path, rank=args.rank)
    ours = host_env.import_pack_in_process().nodes.controlnet_nodes

    model, clip, _ = host_nodes.CheckpointLoaderSimple().load_checkpoint(files["checkpoint"].name)[:3]
    positive = host_nodes.CLIPTextEncode().encode(clip, "a dancer on a stage")[0]
    negative = host_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    host_lora = host_nodes.ControlNetLoader().load_controlnet(lora_path.name)[0]
    host_conds = host_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, host_lora, image, 0.8,
                                                                       0.0, 1.0)
    our_lora = ours.LoadControlNet().load(lora_path.name)[0]
    our_conds = ours.ApplyControlNet().apply(positive, negative, our_lora, image, 0.8, 0.0, 1.0)
    variants = {"plain": (positive, negative), "host": host_conds, "ours": our_conds}

    import comfy.model_management

    comfy.model_management.load_models_gpu([model])  # the UNet as the sampler has it at pre_run
    base = model.model
    sampling = base.model_sampling
    build: dict[str, list[float]] = {"host": [], "ours": []}
    for run in range(args.runs):
        for name in (("host", "ours") if run % 2 == 0 else ("ours", "host")):
            control = variants[name][0][0][1]["control"]
            started = time.perf_counter()
            control.pre_run(base, lambda percent: sampling.percent_to_sigma(percent))
            build[name].append(time.perf_counter() - started)
            control.cleanup()
    interleaved = interleaved_get_control(model, variants, args.size // 8, args.calls)
    report = {"rank": args.rank, "median_build_seconds": {k: statistics.median(v) for k, v in build.items()},
              "interleaved_get_control": interleaved}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
