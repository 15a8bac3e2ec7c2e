#!/usr/bin/env python3
"""How hangwatch's cost grows with the ranks it watches: plots the overhead CSV that
`hangwatch-bench` writes (one row per engines x TP) into a PNG beside it.

    python3 scripts/plot-bench.py docs/results/benchmarks.csv   # writes benchmarks.png
"""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src = Path(sys.argv[1])
    rows = list(csv.DictReader(src.open()))
    if not rows:
        print(f"{src}: no rows", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: int(r["processes"]))
    procs = [int(r["processes"]) for r in rows]
    labels = [f'{r["engines"]}×TP{r["tp"]}' for r in rows]

    def col(name):
        out = []
        for r in rows:
            try:
                out.append(float(r[name]))
            except ValueError:
                out.append(float("nan"))
        return out

    panels = [
        ("agent CPU (% of one core)", [("cpu_percent", "CPU")]),
        ("peak RSS (MiB)", [("peak_rss_mib", "RSS")]),
        ("milliseconds", [("tick_ms_p50", "tick p50"), ("tick_ms_p95", "tick p95"),
                          ("metrics_ms_p50", "/metrics p50")]),
        ("milliseconds", [("stack_round_ms_p50", "stack round p50"),
                          ("bundle_write_ms_p50", "bundle write p50")]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for ax, (ylabel, series) in zip(axes.flat, panels):
        for name, label in series:
            ax.plot(procs, col(name), marker="o", label=label)
        ax.set_xlabel("processes watched")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        for x, y, t in zip(procs, col(series[0][0]), labels):
            ax.annotate(t, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.suptitle("hangwatch: cost against the ranks and engines it watches")
    fig.tight_layout()
    out = src.with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
