#!/usr/bin/env python3
"""Plots the benchmark's samples.csv (written by `cargo xtask bench`).

    python3 tests/bench/plot.py target/bench/samples.csv target/bench/latency.png

Left: median ADD latency of the timed sample pods against the number of pods
already on the node, one line per chain, ours solid and the reference dashed.
Right: every untimed background ADD while the node filled up (rolling median),
which shows the trend between the levels.

Needs matplotlib (`pip install matplotlib`).
"""

import csv
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHAINS = {
    "A": "A: bridge + host-local",
    "B": "B: + ipMasq",
    "C": "C: + portmap",
}
COLORS = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
STYLES = {"ours": "-", "reference": "--"}


def rolling_median(values, window):
    out = []
    for i in range(len(values)):
        lo = max(0, i - window + 1)
        out.append(statistics.median(values[lo : i + 1]))
    return out


def main(csv_path, png_path):
    sampled = defaultdict(lambda: defaultdict(list))  # (side, chain) -> pods -> [ms]
    background = defaultdict(list)  # (side, chain) -> [(pods, ms)]
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["side"], row["chain"])
            pods, ms = int(row["pods"]), float(row["ms"])
            if row["op"] == "ADD":
                sampled[key][pods].append(ms)
            elif row["op"] == "bg-ADD":
                background[key].append((pods, ms))

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for (side, chain), by_level in sorted(sampled.items()):
        levels = sorted(by_level)
        medians = [statistics.median(by_level[lv]) for lv in levels]
        left.plot(
            levels,
            medians,
            STYLES.get(side, ":"),
            marker="o",
            color=COLORS.get(chain),
            label=f"{CHAINS.get(chain, chain)} — {side}",
        )
    all_levels = sorted({lv for by_level in sampled.values() for lv in by_level})
    left.set_xscale("symlog", linthresh=1)
    left.set_xticks(all_levels)
    left.set_xticklabels([str(lv) for lv in all_levels])
    left.minorticks_off()
    left.set_xlabel("pods already on the node")
    left.set_ylabel("ADD latency, median (ms)")
    left.set_title("ADD latency of a new pod (whole chain)")
    left.set_ylim(bottom=0)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    for (side, chain), points in sorted(background.items()):
        points.sort()
        xs = [p for p, _ in points]
        ys = rolling_median([ms for _, ms in points], 15)
        right.plot(
            xs,
            ys,
            STYLES.get(side, ":"),
            color=COLORS.get(chain),
            label=f"{CHAINS.get(chain, chain)} — {side}",
        )
    right.set_xlabel("pods already on the node")
    right.set_ylabel("ADD latency, rolling median of 15 (ms)")
    right.set_title("Background ADDs while the node fills")
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SAMPLES.csv OUT.png")
    main(sys.argv[1], sys.argv[2])
