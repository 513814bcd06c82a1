"""Reliability soak in a real ComfyUI server: many prompts, interrupts, bad inputs, five stacked controls.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/host-venv/bin/python bench/bench_reliability.py [--prompts 30]

The long version of tests/host/test_host_reliability.py, on the same random-weight SD1.5-shaped
models (tests/host/weights.py), 256×256, one step per prompt:

- `--prompts` prompts in a row rotating ControlNets, a T2I-Adapter and ControlNeXt, images, masks and
  modes, every fifth one interrupted mid-sampling; the server's resident memory after warm-up and at
  the end (drift), after each prompt, the growth of its highest mark from the first to the second
  half of the run, and its peak;
- every bad file and bad value of the host test, each expected to fail with a clear message while
  the server stays up;
- five stacked controls: our two chained MultiControlStack nodes (3 + 2 entries) against the host's
  five chained ControlNetApplyAdvanced, alternating, the server's peak resident memory during each
  and the time per prompt.

Prints a JSON report (also written to bench/out/bench_reliability.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))

import host_env  # noqa: E402
from bench_host import PeakRss  # noqa: E402  (same folder)


def five_controls(test_host_server, ours: bool) -> dict:
    files = [test_host_server.POSE, test_host_server.DEPTH] * 2 + [test_host_server.POSE]
    images = ["pose_image", "depth_image"] * 2 + ["pose_image"]
    controls = [(name, image, 0.5) for name, image in zip(files, images)]
    prompt = test_host_server.base_prompt(steps=1)
    if not ours:
        return test_host_server.with_host_controls(prompt, controls)
    stacks = [controls[:3], controls[3:]]
    upstream = None
    for index, entries in enumerate(stacks):
        inputs = {"positive": ["pos", 0], "negative": ["neg", 0]} if upstream is None else \
            {"positive": [upstream, 0], "negative": [upstream, 1]}
        for slot in (1, 2, 3):
            inputs.update({f"enabled_{slot}": slot <= len(entries), f"strength_{slot}": 0.5,
                           f"start_percent_{slot}": 0.0, f"end_percent_{slot}": 1.0,
                           f"control_mode_{slot}": "balanced"})
        for slot, (name, image, _) in enumerate(entries, start=1):
            prompt[f"load_{index}_{slot}"] = {"class_type": "ControlNetPack_LoadControlNet",
                                              "inputs": {"control_net_name": name}}
            inputs.update({f"control_net_{slot}": [f"load_{index}_{slot}", 0], f"image_{slot}": [image, 0]})
        prompt[f"stack_{index}"] = {"class_type": "ControlNetPack_MultiControlStack", "inputs": inputs}
        upstream = f"stack_{index}"
    prompt["sampler"]["inputs"].update(positive=[upstream, 0], negative=[upstream, 1])
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--interrupt-every", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the five-control comparison")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bench_reliability.json")
    args = parser.parse_args()
    if args.prompts < 6:  # memory settles after prompt 4; growth compares two halves of the readings after it
        parser.error(f"--prompts: expected at least 6, found {args.prompts}")
    files = host_env.host_for_bench(model_folders=False)  # the server gets its own folders
    comfy = host_env.comfyui_path()
    import numpy as np
    import psutil
    from PIL import Image

    import test_host_reliability as reliability
    import test_host_server

    images = {"example_pose.png": Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)),
              "example_depth.png": Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1)))
              .convert("RGB")}
    base = host_env.prepare_base(Path(tempfile.mkdtemp(prefix="reliability_")), files, images)
    server = host_env.HostServer(comfy, base)
    report: dict = {}
    try:
        server.wait_ready()
        rss = lambda: psutil.Process(server.process.pid).memory_info().rss / 2 ** 20  # noqa: E731
        ran = interrupted = 0
        settled = None
        readings: list[float] = []
        with PeakRss(server.process.pid, interval=0.02) as peak:
            for index in range(args.prompts):
                prompt = reliability.varied_prompt(index)
                if args.interrupt_every and index % args.interrupt_every == args.interrupt_every - 1:
                    prompt["sampler"]["inputs"]["steps"] = 4
                    worker = threading.Thread(target=server.run_prompt, args=(prompt,))
                    seen = len(server.log())
                    worker.start()
                    while worker.is_alive() and not any(m in server.log()[seen:] for m in ("it/s", "s/it")):
                        time.sleep(0.1)
                    server.post("/interrupt", {})
                    worker.join()
                    interrupted += 1
                else:
                    result = server.run_prompt(prompt)
                    assert result["ok"], f"prompt {index}: {result['error']}"
                ran += 1
                if index == 3:
                    settled = rss()
                elif index > 3:
                    readings.append(rss())
        # The resident size swings by about a model's size between prompts as the host loads and frees,
        # so growth is judged on the highest reading of the later half against the earlier half's.
        half = len(readings) // 2
        report["prompts"] = {"run": ran, "interrupted": interrupted, "rss_after_warmup_mib": settled,
                             "rss_at_end_mib": rss(), "peak_rss_mib": peak.peak / 2 ** 20,
                             "drift": (rss() - settled) / settled,
                             "rss_after_each_prompt_mib": [round(r) for r in readings],
                             "highest_mark_growth": max(readings[half:]) / max(readings[:half]) - 1}
        print(json.dumps(report["prompts"]), flush=True)

        folder = Path(server.base) / "models" / "controlnet"
        bad_files = reliability.write_bad_files(folder, folder / test_host_server.POSE)
        bad_values = reliability.bad_value_prompts()
        failures_named = 0
        for name, phrase in bad_files.items():
            result = server.run_prompt(test_host_server.with_our_apply(test_host_server.base_prompt(steps=1), name,
                                                                       "pose_image", 1.0))
            failures_named += (not result["ok"]) and phrase in result["error"]
        for name, (prompt, phrase) in bad_values.items():
            result = server.run_prompt(prompt)
            failures_named += (not result["ok"]) and phrase in result["error"]
        alive = server.process.poll() is None and server.run_prompt(reliability.varied_prompt(0))["ok"]
        report["bad_inputs"] = {"tried": len(bad_files) + len(bad_values), "failed_clearly": failures_named,
                                "server_up_and_next_prompt_ok": alive,
                                "code_ran": (folder / "code_ran.txt").exists()}
        print(json.dumps(report["bad_inputs"]), flush=True)

        seconds: dict[str, list[float]] = {"host": [], "ours": []}
        peaks: dict[str, list[float]] = {"host": [], "ours": []}
        for name in ("host", "ours"):  # warm-up: loads
            server.run_prompt(five_controls(test_host_server, name == "ours"))
        for round_index in range(args.rounds):
            for name in (("host", "ours") if round_index % 2 == 0 else ("ours", "host")):
                # No /free here: the host applies it after the next prompt, which would then time a
                # checkpoint load. Alternating prompts already re-run each side's loaders and sampler.
                before = rss()
                with PeakRss(server.process.pid, interval=0.02) as peak:
                    started = time.perf_counter()
                    result = server.run_prompt(five_controls(test_host_server, name == "ours"))
                    seconds[name].append(time.perf_counter() - started)
                assert result["ok"], result["error"]
                peaks[name].append(peak.peak / 2 ** 20 - before)
        report["five_controls"] = {
            "median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "median_peak_extra_rss_mib": {k: statistics.median(v) for k, v in peaks.items()},
            "peak_ratio_ours_over_host": statistics.median(peaks["ours"]) / statistics.median(peaks["host"]),
        }
        print(json.dumps(report["five_controls"]), flush=True)
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
