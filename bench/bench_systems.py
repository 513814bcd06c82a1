"""Control systems side by side inside the real host: ControlNeXt vs ControlNet, our T2I-Adapter vs the
host's, and each system's parameters and load time.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_systems.py [--steps 4 --rounds 3]

Full-size SD1.5 shapes with random weights (tests/host/weights.py), 256×256 (latent 32×32), the same
checkpoint, prompt, image and seed for every variant. Each round runs KSampler without control and
with each control (the order rotates per round):

    overhead per step = (time with the control − time without) / steps

and the control's own time per call is taken from its get_control inside those runs (first call
and later calls apart, since a T2I-Adapter computes its features on the first call only). Reported:

- ControlNeXt (module + its UNet weight deltas) over ControlNet: overhead and call-time ratios;
- our T2I-Adapter over the host's: overhead per step, and time per call after the first;
- parameters and load time (cold, median of several loads) of each system's file through our loader.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))

import host_env  # noqa: E402


def timed_calls(control, record: list[float]):
    """Wrap control.get_control to record each call's seconds."""
    original = control.get_control

    def get_control(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - started)

    control.get_control = get_control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--loads", type=int, default=3, help="timed loads per file")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bench_systems.json")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps: expected at least 2 (calls after the first are timed apart from it), found {args.steps}")

    files = host_env.host_for_bench()
    import torch

    import comfy.model_management
    import nodes as host_nodes

    pack = host_env.import_pack_in_process()
    ours = pack.nodes.controlnet_nodes
    control_object = pack.nodes.control_object

    model, clip, _ = host_nodes.CheckpointLoaderSimple().load_checkpoint(files["checkpoint"].name)[:3]
    positive = host_nodes.CLIPTextEncode().encode(clip, "a dancer on a stage")[0]
    negative = host_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    latent = host_nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]

    # ---- parameters and load time through our loader ------------------------------------------------------
    loads = {}
    for key, companion in (("pose", None), ("t2i_full", None), ("t2i_light", None), ("controlnext", "controlnext_unet")):
        seconds = []
        for _ in range(args.loads):
            control_object._FILE_CACHE.clear()
            started = time.perf_counter()
            loaded = control_object.load_file(str(files[key]), files[key].name,
                                              None if companion is None else str(files[companion]))
            seconds.append(time.perf_counter() - started)
        module = loaded.model
        patches = module.unet_weight_patches()
        loads[key] = {"system": module.system, "parameters": sum(p.numel() for p in module.parameters()),
                      "unet_weight_parameters": sum(t.numel() for _, t in patches.values()),
                      "file_mib": files[key].stat().st_size / 2 ** 20, "median_load_s": statistics.median(seconds)}
        print(f"{key}: {loads[key]}", flush=True)

    # ---- overhead per step in KSampler ----------------------------------------------------------------------
    apply_ours = ours.ApplyControlNet().apply
    apply_host = host_nodes.ControlNetApplyAdvanced().apply_controlnet
    load = ours.LoadControlNet().load
    variants = {
        "plain": (positive, negative),
        "controlnet": apply_ours(positive, negative, load(files["pose"].name)[0], image, 1.0, 0.0, 1.0),
        "controlnext": apply_ours(positive, negative, load(files["controlnext"].name, files["controlnext_unet"].name)[0],
                                  image, 1.0, 0.0, 1.0),
        "t2i_ours": apply_ours(positive, negative, load(files["t2i_full"].name)[0], image, 1.0, 0.0, 1.0),
        "t2i_host": apply_host(positive, negative, host_nodes.ControlNetLoader().load_controlnet(
            files["t2i_full"].name)[0], image, 1.0, 0.0, 1.0),
    }
    calls = {name: [] for name in variants if name != "plain"}
    for name, record in calls.items():
        timed_calls(variants[name][0][0][1]["control"], record)

    def sample(conds):
        return host_nodes.common_ksampler(model, 1, args.steps, 7.0, "euler", "normal", conds[0], conds[1], latent,
                                          denoise=1.0)[0]["samples"]

    for conds in variants.values():  # warm-up: loads, first-call allocations
        sample(conds)
    times = {name: [] for name in variants}
    first_call = {name: [] for name in calls}
    later_calls = {name: [] for name in calls}
    order = list(variants)
    for round_index in range(args.rounds):
        for name in order[round_index % len(order):] + order[:round_index % len(order)]:
            comfy.model_management.soft_empty_cache()
            if name in calls:
                calls[name].clear()
            started = time.perf_counter()
            sample(variants[name])
            times[name].append(time.perf_counter() - started)
            if name in calls:
                first_call[name].append(calls[name][0])
                later_calls[name].append(statistics.median(calls[name][1:]) if len(calls[name]) > 1 else 0.0)
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    overhead = {name: statistics.median((t - p) / args.steps for t, p in zip(times[name], times["plain"]))
                for name in calls}
    median_call = {name: statistics.median(v) for name, v in later_calls.items()}
    report = {
        "device": str(comfy.model_management.get_torch_device()), "threads": torch.get_num_threads(),
        "size": args.size, "steps": args.steps, "rounds": args.rounds, "seconds": times,
        "median_overhead_per_step_s": overhead,
        "median_first_call_s": {name: statistics.median(v) for name, v in first_call.items()},
        "median_later_call_s": median_call,
        "controlnext_over_controlnet": {"overhead": overhead["controlnext"] / overhead["controlnet"],
                                        "call_time": median_call["controlnext"] / median_call["controlnet"],
                                        "parameters": loads["controlnext"]["parameters"] / loads["pose"]["parameters"]},
        "t2i_ours_over_host": {"overhead": overhead["t2i_ours"] / overhead["t2i_host"],
                               "later_call_time": median_call["t2i_ours"] / median_call["t2i_host"]},
        "loads": loads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("median_overhead_per_step_s", "median_first_call_s", "median_later_call_s",
                                             "controlnext_over_controlnet", "t2i_ours_over_host")}, indent=1))
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
