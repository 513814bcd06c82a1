"""ControlNet overhead inside the real host: our MultiControlStack vs the host's two chained apply nodes.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_host.py [--steps 4 --rounds 3]

Same checkpoint, ControlNets (pose + depth), images, prompt and seed for every run; full-size SD1.5
shapes with random weights (generated once, see tests/host/weights.py), 256×256 (latent 32×32).
Each round runs, in turn: KSampler without controls, with the host's two ControlNetApplyAdvanced,
with our MultiControlStack (the order rotates per round). Per round:

    overhead per step = (time with controls − time without) / steps
    ratio             = our overhead / host overhead

The report gives the median ratio, the median overheads, the peak extra resident memory of each
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
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

    def sample(conds):
        return host_nodes.common_ksampler(model, 1, args.steps, 7.0, "euler", "normal", conds[0], conds[1], latent,
                                          denoise=1.0)[0]["samples"]

    sample(variants["plain"])  # warm-up: loads the UNet, first-call allocations
    sample(variants["host"])
    sample(variants["ours"])

    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[float]] = {name: [] for name in variants}
    latents: dict[str, torch.Tensor] = {}
    order = list(variants)
    for round_index in range(args.rounds):
        for name in order[round_index % 3:] + order[:round_index % 3]:  # rotate who runs first
            comfy.model_management.soft_empty_cache()
            with PeakRss() as peak:
                started = time.perf_counter()
                latents[name] = sample(variants[name])
                times[name].append(time.perf_counter() - started)
            peaks[name].append(peak.extra_mib)
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    overhead = {name: [(t - plain) / args.steps for t, plain in zip(times[name], times["plain"])]
                for name in ("host", "ours")}
    ratios = [o / h for o, h in zip(overhead["ours"], overhead["host"])]
    parity = ((latents["ours"] - latents["host"]).abs().max() / latents["host"].abs().max()).item()
    report = {
        "device": str(comfy.model_management.get_torch_device()), "threads": torch.get_num_threads(),
        "size": args.size, "steps": args.steps, "rounds": args.rounds,
        "seconds": times, "overhead_per_step_s": overhead,
        "median_overhead_per_step_s": {k: statistics.median(v) for k, v in overhead.items()},
        "median_ratio_ours_over_host": statistics.median(ratios), "ratios": ratios,
        "peak_extra_rss_mib": {k: max(v) for k, v in peaks.items()},
        "final_latent_relative_max_difference": parity,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("median_overhead_per_step_s", "median_ratio_ours_over_host",
                                             "peak_extra_rss_mib", "final_latent_relative_max_difference")},
                     indent=1))
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
