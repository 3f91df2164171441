"""Draws B9's chart from the JSON of bench/b9.py: req/s and p99 per system.

    python bench/b9_chart.py B9.json docs/b9.svg

Two panels side by side, one row per system, one bar per work kind: requests
per second (longer is better, with the ratio to no background) and p99
latency (shorter is better, log scale). Text stays text in the SVG and the
output carries no date, so the file is small and the same figures give the
same file.
"""

from __future__ import annotations

import io
import json
import re
import sys

COLORS = {"io": "#4c72b0", "cpu": "#dd8452"}


def draw(doc, path):
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "b9",
                         "font.size": 9, "font.family": "sans-serif",
                         "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"]})
    labels = doc["meta"]["labels"]
    works = doc["meta"]["works"]
    systems = [s for s in doc["meta"]["systems"]
               if any(m["system"] == s for m in doc["medians"])]
    med = {(m["work"], m["system"]): m for m in doc["medians"]}

    n = len(systems)
    height = 0.8 / len(works)
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(9, 0.45 * n + 1.3), sharey=True)
    for i, work in enumerate(works):
        ys = [n - 1 - k + (len(works) / 2 - 0.5 - i) * height for k in range(n)]
        nobg = med.get((work, "nobg"))
        rps = [med[(work, s)]["rps"] if (work, s) in med else 0 for s in systems]
        p99 = [med[(work, s)]["p99_ms"] if (work, s) in med else 0 for s in systems]
        ax_rps.barh(ys, rps, height, color=COLORS.get(work), label=work)
        ax_p99.barh(ys, p99, height, color=COLORS.get(work), label=work)
        for y, v in zip(ys, rps):
            if v and nobg:
                ax_rps.text(v, y, f" {v:,.0f} ({v / nobg['rps']:.2f}x)", va="center",
                            fontsize=7)
        for y, v in zip(ys, p99):
            if v:
                ax_p99.text(v, y, f" {v:,.0f} ms" if v >= 10 else f" {v:.1f} ms",
                            va="center", fontsize=7)
    ax_rps.set_yticks(range(n))
    ax_rps.set_yticklabels([labels[s] for s in reversed(systems)])
    ax_rps.set_xlabel("requests/s (longer is better; ratio to no background)")
    ax_rps.set_xlim(0, max(m["rps"] for m in doc["medians"]) * 1.45)
    ax_p99.set_xscale("log")
    ax_p99.set_xlabel("p99 latency, ms, log scale (shorter is better)")
    ax_p99.set_xlim(right=max(m["p99_ms"] for m in doc["medians"]) * 6)
    ax_p99.legend(title="work", loc="lower right", fontsize=7, title_fontsize=7)
    for ax in (ax_rps, ax_p99):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="x", linewidth=0.3)
        ax.set_axisbelow(True)
    meta = doc["meta"]
    fig.suptitle(f"B9: uvicorn + Starlette route with one background call, "
                 f"wrk -c{meta['connections']}, {meta['cpus']} cores, median of "
                 f"{meta['repeats']} x {meta['seconds']} s, load average "
                 f"{meta['loadavg'][1]:.1f} at the end", fontsize=9)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    # two decimals are a hundredth of a point: plenty, and a third of the bytes
    svg = re.sub(r"(\d+\.\d\d)\d+", r"\1", buf.getvalue())
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"\s*\n\s*", "\n", svg)  # indentation
    svg = re.sub(r"\n(?=[LMCz] ?)", " ", svg)  # one line per path
    svg = re.sub(r' transform="rotate\(-0 [\d. ]+\)"', "", svg)
    with open(path, "w") as fh:
        fh.write(svg)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        draw(json.load(fh), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
