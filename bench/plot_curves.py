"""Plot the cost curves of bench_host.py --curves (needs matplotlib: `pip install -e .[bench]` or
`pip install matplotlib`; the pack itself does not).

    .venv/bin/python bench/plot_curves.py [bench/out/bench_host_curves.json ...] [--png bench/cost_curves.png]

Several reports (a grid run in parts, e.g. with bench_host.py --grid) are merged point by point, a
later file's point replacing an earlier one at the same resolution, batch and control count; the
merged tables and fitted lines are printed (bench_host.py's own format) and the plot drawn from them.

Left: ControlNet overhead per step (CPU time) against the number of controls, one line per
resolution and batch, the host's chained apply nodes dashed, ours solid, both axes logarithmic
(cost proportional to the controls is then a straight line of slope 1). Right: the peak extra
resident memory of one step, the same way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_host import curve_fits, print_curves  # same folder; importing it imports no host

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
    parser.add_argument("json", nargs="*", type=Path, default=[REPO_ROOT / "bench" / "out" / "bench_host_curves.json"])
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "bench" / "cost_curves.png")
    parser.add_argument("--merged", type=Path, default=None, help="also write the merged report here")
    args = parser.parse_args()
    curves = merge([json.loads(path.read_text()) for path in args.json])
    print_curves(curves)
    if args.merged is not None:
        args.merged.write_text(json.dumps(curves, indent=1))
    plot(curves, args.png)
    print(f"written to {args.png}")


def merge(reports: list[dict]) -> dict:
    """One report from several: points keyed by (size, batch, controls), later reports winning;
    fits recomputed. Reports taken with different thread counts or hosts are refused."""
    for key in ("threads", "host_version"):
        values = {report.get(key) for report in reports}
        if len(values) > 1:
            raise SystemExit(f"reports differ in {key}: {sorted(map(str, values))}; merge runs made alike")
    points: dict[tuple, dict] = {}
    for report in reports:
        for point in report["points"]:
            points[(point["size"], point["batch"], point["controls"])] = point
    merged = {**reports[-1], "points": [points[key] for key in sorted(points)]}
    merged["fits"] = curve_fits(merged["points"])
    return merged


if __name__ == "__main__":
    main()
