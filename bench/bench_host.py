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

Cost curves (--curves, instead of the KSampler runs): ControlNet overhead per step as a function of
the number of controls, the resolution and the batch, ours (chained ApplyControlNet nodes, which run
as one stack) against the host's chained ControlNetApplyAdvanced, in the same process. One step's
control work is one get_control call of the outermost control on sampler-shaped inputs (batch B
latents → 2B rows, cond + uncond, sigma at 30 % of the schedule); the UNet's own time does not
depend on the controls, so this is the overhead per step (the KSampler runs above show the two agree).
Controls alternate the pose and depth files, each with its own image. Per point: CPU time and wall
time of --curve-calls calls per side (host and ours alternate; ours' per-run hint embeddings are done
before, as the first step of a run does them once; the host's first-call hint resize, milliseconds,
is inside), and the peak extra resident memory during a call. For each resolution and batch a
least-squares line through the points gives the cost per added control (slope) and how far any
point lies from it; the slope of ours is compared with the host's. Intra-op threads: --threads
(default 1: CPU time is then the compute and hardly moves with the load of a shared box).
The default grid keeps the run near 15 minutes of CPU time: every control count at 256² (batch 1
and 4) and 512² (batch 1), 1 and 2 controls at 768², 1 control at 512² and 768² batch 4;
--full-grid runs every combination (about an hour and a half on one thread).
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
    """Peak resident memory of a process (default this one; `pid` for another, such as a server),
    sampled every `interval` seconds in a thread; `extra_mib` is the peak above the starting level."""

    def __init__(self, pid: int | None = None, interval: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

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


DEFAULT_GRID = {(256, 1): (1, 2, 3, 5), (256, 4): (1, 2, 3, 5), (512, 1): (1, 2, 3, 5),
                (768, 1): (1, 2), (512, 4): (1,), (768, 4): (1,)}
FULL_GRID = {(size, batch): (1, 2, 3, 5) for size in (256, 512, 768) for batch in (1, 4)}


def parse_grid(text: str) -> dict:
    """'256x1:1,2,3;512x4:1' -> {(256, 1): (1, 2, 3), (512, 4): (1,)}."""
    grid = {}
    for part in text.split(";"):
        point, counts = part.split(":")
        size, batch = point.split("x")
        grid[(int(size), int(batch))] = tuple(int(c) for c in counts.split(","))
    return grid


def linear_fit(points: list[tuple[int, float]]) -> dict:
    """Least-squares line through (controls, seconds): slope, intercept, largest relative deviation."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else float("nan")
    intercept = mean_y - slope * mean_x
    deviation = max(abs(y - (intercept + slope * x)) / y for x, y in points) if spread else 0.0
    return {"slope_s": slope, "intercept_s": intercept, "max_relative_deviation": deviation}


def cost_curves(args, host_nodes, ours, positive, negative, nets: dict, sampling, base) -> dict:
    """Overhead per step vs controls, resolution and batch, host chain vs ours (see the docstring)."""
    import torch

    grid = parse_grid(args.grid) if args.grid else FULL_GRID if args.full_grid else DEFAULT_GRID
    apply_host = host_nodes.ControlNetApplyAdvanced().apply_controlnet
    apply_ours = ours.ApplyControlNet().apply
    sigma = float(sampling.percent_to_sigma(0.3))
    points = []
    for (size, batch), counts in grid.items():
        for count in counts:
            generator = torch.Generator().manual_seed(size + count)
            images = [torch.rand(1, size, size, 3, generator=generator) for _ in range(count)]
            host_conds, our_conds = (positive, negative), (positive, negative)
            for index, image in enumerate(images):
                kind = ("pose", "depth")[index % 2]
                host_conds = apply_host(*host_conds, nets["host_" + kind], image, 1.0, 0.0, 1.0)[:2]
                our_conds = apply_ours(*our_conds, nets["ours_" + kind], image, 1.0, 0.0, 1.0)
            controls = {"host": host_conds[0][0][1]["control"], "ours": our_conds[0][0][1]["control"]}
            rows = 2 * batch
            x = torch.randn(rows, 4, size // 8, size // 8, generator=generator)
            context = torch.cat([positive[0][0].repeat(batch, 1, 1), negative[0][0].repeat(batch, 1, 1)])
            t = torch.full((rows,), sigma)
            call_args = (x, t, {"c_crossattn": context}, 2, {"cond_or_uncond": [0, 1]})
            record = {"size": size, "batch": batch, "controls": count}
            timings = {name: {"cpu": [], "wall": [], "peak_mib": []} for name in controls}
            try:
                for control in controls.values():
                    control.pre_run(base, lambda percent: sampling.percent_to_sigma(percent))
                with torch.inference_mode():
                    for entry in controls["ours"]._stack.entries:  # the run's one hint embedding per entry
                        entry.prepared(size // 8, size // 8, x.device)
                    for call in range(args.curve_calls):
                        for name in (("host", "ours") if call % 2 == 0 else ("ours", "host")):
                            with PeakRss() as peak:
                                started, started_cpu = time.perf_counter(), time.process_time()
                                out = controls[name].get_control(*call_args)
                                timings[name]["cpu"].append(time.process_time() - started_cpu)
                                timings[name]["wall"].append(time.perf_counter() - started)
                            timings[name]["peak_mib"].append(peak.extra_mib)
                            assert out is not None and out.get("output"), f"{name} added nothing"
                            del out
            finally:
                for control in controls.values():
                    control.cleanup()
            for name, values in timings.items():
                record[name] = {"cpu_s": statistics.median(values["cpu"]), "wall_s": statistics.median(values["wall"]),
                                "peak_extra_rss_mib": max(values["peak_mib"])}
            points.append(record)
            if args.out is not None:  # kept up to date, so a run cut short still leaves its points
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"points": points, "threads": torch.get_num_threads()}, indent=1))
            print(f"{size}² batch {batch}, {count} control(s): host {record['host']['cpu_s']:.2f} s, "
                  f"ours {record['ours']['cpu_s']:.2f} s CPU; peak +{record['host']['peak_extra_rss_mib']:.0f} / "
                  f"+{record['ours']['peak_extra_rss_mib']:.0f} MiB", flush=True)
    return {"threads": torch.get_num_threads(), "calls_per_point": args.curve_calls, "sigma": sigma,
            "points": points, "fits": curve_fits(points)}


def curve_fits(points: list[dict]) -> list[dict]:
    """A least-squares line per resolution and batch (two or more control counts), host and ours."""
    fits = []
    for size, batch in dict.fromkeys((p["size"], p["batch"]) for p in points):
        series = sorted((p for p in points if p["size"] == size and p["batch"] == batch), key=lambda p: p["controls"])
        if len(series) < 2:
            continue
        fit = {"size": size, "batch": batch, "controls": [p["controls"] for p in series]}
        for name in ("host", "ours"):
            fit[name] = linear_fit([(p["controls"], p[name]["cpu_s"]) for p in series])
        fit["slope_ratio_ours_over_host"] = fit["ours"]["slope_s"] / fit["host"]["slope_s"]
        fits.append(fit)
    return fits


def print_curves(curves: dict) -> None:
    print("\n| resolution | batch | controls | host CPU s/step | ours CPU s/step | ours / host | host wall | ours wall "
          "| host peak extra MiB | ours peak extra MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in curves["points"]:
        print(f"| {p['size']}² | {p['batch']} | {p['controls']} | {p['host']['cpu_s']:.2f} | {p['ours']['cpu_s']:.2f} | "
              f"{p['ours']['cpu_s'] / p['host']['cpu_s']:.2f} | {p['host']['wall_s']:.2f} | {p['ours']['wall_s']:.2f} | "
              f"{p['host']['peak_extra_rss_mib']:.0f} | {p['ours']['peak_extra_rss_mib']:.0f} |")
    print("\n| resolution | batch | controls | host s per control | ours s per control | slope ours / host | "
          "largest deviation from a line, host / ours | linear, slope below host's |")
    print("|---|---|---|---|---|---|---|---|")
    for f in curves["fits"]:
        linear = f["ours"]["max_relative_deviation"] <= 0.1
        below = f["slope_ratio_ours_over_host"] < 1.0
        verdict = "yes" if linear and below else ("NOT LINEAR" if not linear else "") + \
            (" SLOPE NOT BELOW" if not below else "")
        print(f"| {f['size']}² | {f['batch']} | {','.join(map(str, f['controls']))} | {f['host']['slope_s']:.2f} | "
              f"{f['ours']['slope_s']:.2f} | {f['slope_ratio_ours_over_host']:.2f} | "
              f"{f['host']['max_relative_deviation']:.1%} / {f['ours']['max_relative_deviation']:.1%} | "
              f"{verdict.strip()} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--calls", type=int, default=8, help="interleaved get_control calls per variant")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report (default bench/out/bench_host.json, or bench_host_curves.json)")
    parser.add_argument("--curves", action="store_true", help="cost curves instead of the KSampler runs")
    parser.add_argument("--full-grid", action="store_true", help="curves: every controls × resolution × batch")
    parser.add_argument("--grid", help="curves: points to run, e.g. '256x1:1,2,3,5;768x4:1' (size x batch: controls)")
    parser.add_argument("--curve-calls", type=int, default=1, help="curves: timed calls per side and point")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (curves: default 1)")
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO_ROOT / "bench" / "out" / ("bench_host_curves.json" if args.curves else "bench_host.json")

    files = host_env.host_for_bench()
    import torch

    threads = args.threads if args.threads is not None else (1 if args.curves else None)
    if threads is not None:
        torch.set_num_threads(threads)

    import comfy.model_management
    import nodes as host_nodes

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

    if args.curves:
        nets = {"host_pose": host_pose, "host_depth": host_depth, "ours_pose": our_pose, "ours_depth": our_depth}
        curves = cost_curves(args, host_nodes, ours, positive, negative, nets, model.model.model_sampling, model.model)
        curves["device"] = str(comfy.model_management.get_torch_device())
        curves["host_version"] = getattr(__import__("comfyui_version"), "__version__", "?") \
            if (host_env.comfyui_path() / "comfyui_version.py").exists() else "?"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(curves, indent=1))
        print_curves(curves)
        print(f"written to {os.path.relpath(args.out)}")
        return

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
