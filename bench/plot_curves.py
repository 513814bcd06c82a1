"""Plot the cost curves of bench_host.py --curves (needs matplotlib: `pip install -e .[bench]` or
`pip install matplotlib`; the pack itself does not).

    .venv/bin/python bench/plot_curves.py [bench/out/bench_host_curves.json] [--png bench/cost_curves.png]

Left: ControlNet overhead per step (CPU time) against the number of controls, one line per
resolution and batch, the host's chained apply nodes dashed, ours solid, both axes logarithmic
(cost proportional to the controls is then a straight line of slope 1). Right: the peak extra
resident memory of one step, the same way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def plot(curves: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series: dict[tuple[int, int], list[dict]] = {}
    for point in curves["points"]:
        series.setdefault((point["size"], point["batch"]), []).append(point)
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, ((size, batch), points) in enumerate(sorted(series.items())):
        points.sort(key=lambda p: p["controls"])
        controls = [p["controls"] for p in points]
        colour = colours[index % len(colours)]
        label = f"{size}², batch {batch}"
        for axis, key, scale in ((time_axis, "cpu_s", 1.0), (memory_axis, "peak_extra_rss_mib", 1 / 1024)):
            axis.plot(controls, [p["host"][key] * scale for p in points], "--o", color=colour, alpha=0.6,
                      markersize=4, label=f"host, {label}")
            axis.plot(controls, [p["ours"][key] * scale for p in points], "-o", color=colour, markersize=4,
                      label=f"ours, {label}")
    # Log-log: cost proportional to the number of controls is a straight line of slope 1 at any scale.
    time_axis.set(xlabel="controls", ylabel="ControlNet overhead per step, CPU s (1 thread)", xscale="log",
                  yscale="log", title="overhead per step (dashed: host's chained apply nodes)")
    memory_axis.set(xlabel="controls", ylabel="peak extra resident memory per step, GiB",
                    title="peak memory (dashed: host)")
    for axis in (time_axis, memory_axis):
        ticks = sorted({p["controls"] for p in curves["points"]})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
    time_axis.legend(fontsize=7, ncol=2)
    figure.suptitle(f"SD1.5 ControlNets (random weights), CPU, {curves.get('host_version', '?')} host, "
                    f"{curves['threads']} thread(s)", fontsize=10)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="?", type=Path, default=REPO_ROOT / "bench" / "out" / "bench_host_curves.json")
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "bench" / "cost_curves.png")
    args = parser.parse_args()
    plot(json.loads(args.json.read_text()), args.png)
    print(f"written to {args.png}")


if __name__ == "__main__":
    main()
