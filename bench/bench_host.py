"""ControlNet overhead inside the real host: our MultiControlStack vs the host's two chained apply nodes.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_host.py [--steps 4 --rounds 3]

Same checkpoint, ControlNets (pose + depth), images, prompt and seed for every run; full-size SD1.5
shapes with random weights (generated once, see tests/host/weights.py), 256×256 (latent 32×32).
Each round runs, in turn: KSampler without controls, with the host's two ControlNetApplyAdvanced,
with our MultiControlStack (the order rotates per round). Per round:

    overhead per step = (time with controls − time without) / steps
    ratio             = our overhead / host overhead

On a shared machine whole-run times are noisy (another process can slow one run by 2×), so two
finer measures come with it:

- control time per step inside the real KSampler runs: the outermost control object's get_control
  is timed (it includes the chained ControlNet), summed per run, divided by steps;
- interleaved calls: get_control of host and ours alternately on the same inputs (x batch 2 =
  cond + uncond, sigma of each step), many short alternations, median ratio.

The report gives these ratios, the median overheads, the peak extra resident memory of each
variant (sampled RSS above the level before the run) and the relative max difference of the final
latents ours vs host (parity must hold while we are faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))

import host_env  # noqa: E402


class PeakRss:
    """Peak resident memory above the starting level, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def timed(function, total: list[float]):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started
    return wrapper


def interleaved_get_control(model, variants: dict, latent: int, calls: int) -> dict:
    """get_control of host and ours alternately on identical sampler-shaped inputs."""
    import torch

    base = model.model
    sampling = base.model_sampling
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, latent, latent, generator=generator)
    context = torch.cat([variants["plain"][0][0][0], variants["plain"][1][0][0]])
    sigma = torch.full((2,), float(sampling.percent_to_sigma(0.3)))
    controls = {name: variants[name][0][0][1]["control"] for name in ("host", "ours")}
    seconds: dict[str, list[float]] = {"host": [], "ours": []}
    outputs = {}
    for control in controls.values():
        control.pre_run(base, lambda percent: sampling.percent_to_sigma(percent))
    try:
        with torch.inference_mode():
            for name, control in controls.items():  # warm-up: hint resize (host), hint embedding (ours)
                control.get_control(x, sigma, {"c_crossattn": context}, 2, {"cond_or_uncond": [0, 1]})
            for call in range(calls):
                for name in (("host", "ours") if call % 2 == 0 else ("ours", "host")):
                    started = time.perf_counter()
                    outputs[name] = controls[name].get_control(x, sigma, {"c_crossattn": context}, 2,
                                                               {"cond_or_uncond": [0, 1]})
                    seconds[name].append(time.perf_counter() - started)
    finally:
        for control in controls.values():
            control.cleanup()
    ratios = [o / h for o, h in zip(seconds["ours"], seconds["host"])]
    worst = max(((a - b).abs().max() / b.abs().max()).item()
                for a, b in zip(outputs["ours"]["output"] + outputs["ours"]["middle"],
                                outputs["host"]["output"] + outputs["host"]["middle"]))
    return {"median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "median_ratio": statistics.median(ratios), "calls": calls, "residual_relative_max_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--calls", type=int, default=8, help="interleaved get_control calls per variant")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bench_host.json")
    args = parser.parse_args()

    comfy_path = host_env.comfyui_path()
    if comfy_path is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI tree and run with the host's venv python")
    host_env.import_comfy(comfy_path)
    import torch

    import comfy.model_management
    import folder_paths
    import nodes as host_nodes
    import weights

    files = weights.ensure_weights(host_env.WEIGHTS_CACHE)
    folder_paths.add_model_folder_path("checkpoints", str(files["checkpoint"].parent))
    folder_paths.add_model_folder_path("controlnet", str(files["pose"].parent))
    ours = host_env.import_pack_in_process().nodes.controlnet_nodes

    model, clip, _ = host_nodes.CheckpointLoaderSimple().load_checkpoint(files["checkpoint"].name)[:3]
    positive = host_nodes.CLIPTextEncode().encode(clip, "a dancer on a stage")[0]
    negative = host_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    generator = torch.Generator().manual_seed(0)
    pose_image = torch.rand(1, args.size, args.size, 3, generator=generator)
    depth_image = torch.rand(1, args.size, args.size, 3, generator=generator)
    latent = host_nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]

    host_pose = host_nodes.ControlNetLoader().load_controlnet(files["pose"].name)[0]
    host_depth = host_nodes.ControlNetLoader().load_controlnet(files["depth"].name)[0]
    apply_host = host_nodes.ControlNetApplyAdvanced().apply_controlnet
    p, n = apply_host(positive, negative, host_pose, pose_image, 1.0, 0.0, 1.0)
    host_conds = apply_host(p, n, host_depth, depth_image, 0.6, 0.0, 1.0)

    our_pose = ours.LoadControlNet().load(files["pose"].name)[0]
    our_depth = ours.LoadControlNet().load(files["depth"].name)[0]
    slots = {"enabled_1": True, "strength_1": 1.0, "start_percent_1": 0.0, "end_percent_1": 1.0,
             "control_mode_1": "balanced", "control_net_1": our_pose, "image_1": pose_image,
             "enabled_2": True, "strength_2": 0.6, "start_percent_2": 0.0, "end_percent_2": 1.0,
             "control_mode_2": "balanced", "control_net_2": our_depth, "image_2": depth_image,
             "enabled_3": False, "strength_3": 1.0, "start_percent_3": 0.0, "end_percent_3": 1.0,
             "control_mode_3": "balanced"}
    our_conds = ours.MultiControlStack().apply(positive, negative, None, **slots)[:2]

    variants = {"plain": (positive, negative), "host": host_conds, "ours": our_conds}
    control_seconds = {"host": [0.0], "ours": [0.0]}
    for name in ("host", "ours"):
        top = variants[name][0][0][1]["control"]  # shared by positive and negative
        top.get_control = timed(top.get_control, control_seconds[name])

    def sample(conds):
        return host_nodes.common_ksampler(model, 1, args.steps, 7.0, "euler", "normal", conds[0], conds[1], latent,
                                          denoise=1.0)[0]["samples"]

    sample(variants["plain"])  # warm-up: loads the UNet, first-call allocations
    sample(variants["host"])
    sample(variants["ours"])

    control_per_step: dict[str, list[float]] = {"host": [], "ours": []}
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[float]] = {name: [] for name in variants}
    latents: dict[str, torch.Tensor] = {}
    order = list(variants)
    for round_index in range(args.rounds):
        for name in order[round_index % 3:] + order[:round_index % 3]:  # rotate who runs first
            comfy.model_management.soft_empty_cache()
            if name in control_seconds:
                control_seconds[name][0] = 0.0
            with PeakRss() as peak:
                started = time.perf_counter()
                latents[name] = sample(variants[name])
                times[name].append(time.perf_counter() - started)
            peaks[name].append(peak.extra_mib)
            if name in control_seconds:
                control_per_step[name].append(control_seconds[name][0] / args.steps)
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    overhead = {name: [(t - plain) / args.steps for t, plain in zip(times[name], times["plain"])]
                for name in ("host", "ours")}
    ratios = [o / h for o, h in zip(overhead["ours"], overhead["host"])]
    parity = ((latents["ours"] - latents["host"]).abs().max() / latents["host"].abs().max()).item()
    control_ratios = [o / h for o, h in zip(control_per_step["ours"], control_per_step["host"])]
    interleaved = interleaved_get_control(model, variants, args.size // 8, args.calls)
    report = {
        "device": str(comfy.model_management.get_torch_device()), "threads": torch.get_num_threads(),
        "size": args.size, "steps": args.steps, "rounds": args.rounds,
        "seconds": times, "overhead_per_step_s": overhead,
        "median_overhead_per_step_s": {k: statistics.median(v) for k, v in overhead.items()},
        "median_ratio_ours_over_host": statistics.median(ratios), "ratios": ratios,
        "control_seconds_per_step": control_per_step,
        "median_control_seconds_per_step": {k: statistics.median(v) for k, v in control_per_step.items()},
        "median_control_ratio_in_ksampler": statistics.median(control_ratios),
        "interleaved_get_control": interleaved,
        "peak_extra_rss_mib": {k: max(v) for k, v in peaks.items()},
        "final_latent_relative_max_difference": parity,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("median_overhead_per_step_s", "median_ratio_ours_over_host",
                                             "median_control_seconds_per_step", "median_control_ratio_in_ksampler",
                                             "interleaved_get_control",
                                             "peak_extra_rss_mib", "final_latent_relative_max_difference")},
                     indent=1))
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
