"""bench/results.png: one bar per row, its ratio against its target, on a log scale.

Green bars met their target, red ones missed it, grey ones are informational
(no target). The target is a black tick across the bar; the label at the end
of the bar gives the ratio and the target with its direction (``>= 0.8x``
for throughput, ``<= 1.1x`` for latency and memory). A log scale keeps a
0.06x and a 6x row equally readable. A row that was not measured keeps its
place, with no bar and the reason as its label.

The load curve's rows (those with a ``curve`` entry, :mod:`bench.load`) are
drawn apart, under the bars: throughput against connections on the left
axis, p50 and p99 on the right one, both connections and latency on log
scales, so that the point where latency starts to climb shows as a bend.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Final

__all__ = ["CHART", "write_chart"]

CHART: Final = Path(__file__).with_name("results.png")
_COLOURS: Final = {True: "#2e9d48", False: "#d1495b", None: "#9aa0a6"}
_LEGEND: Final = (
    ("target met", _COLOURS[True]),
    ("target missed", _COLOURS[False]),
    ("informational", _COLOURS[None]),
)


def write_chart(rows: list[dict[str, Any]], title: str, path: Path = CHART) -> Path:
    """Draw ``rows`` (dicts from :func:`bench.report.comparison`) to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    curve = [r for r in rows if "curve" in r]
    bars = [r for r in rows if "curve" not in r]
    bars_height = 1.2 + 0.55 * len(bars)
    if curve and bars:
        figure, (upper, lower) = plt.subplots(
            2, 1, figsize=(12, bars_height + 4), height_ratios=[bars_height, 4]
        )
        _draw_bars(upper, bars, title)
        _draw_curve(lower, curve, "load curve: where latency starts to climb")
    elif curve:
        figure, lower = plt.subplots(figsize=(12, 4.5))
        _draw_curve(lower, curve, f"{title}: load curve")
    else:
        figure, upper = plt.subplots(figsize=(12, bars_height))
        _draw_bars(upper, bars, title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _draw_bars(axes: Any, rows: list[dict[str, Any]], title: str) -> None:
    from matplotlib.patches import Patch

    from .report import target_text

    labels = [textwrap.fill(r["row"], 58) for r in rows]
    # Ratios can be zero or negative (latency added can be below zero): clip for
    # the log axis. A row not measured has no bar (its ratio is None).
    ratios = [max(r["ratio"], 1e-3) if r["ratio"] is not None else 0.0 for r in rows]
    positions = list(range(len(rows)))[::-1]  # first row on top
    axes.barh(positions, ratios, color=[_COLOURS[r["met"]] for r in rows], height=0.6)
    for y, r, shown in zip(positions, rows, ratios, strict=True):
        if r["target"] is not None:
            axes.plot([r["target"]] * 2, [y - 0.38, y + 0.38], color="black", linewidth=2)
        if r["ratio"] is None:
            text = f"{target_text(r)} ({r['note'].removeprefix('not measured: ')})"
        else:
            text = f"{r['ratio']:.2f}x  ({target_text(r)}; {_pair(r)})"
        # After the bar or the target tick, whichever ends further right.
        axes.text(max(shown, r["target"] or 0, 0.5) * 1.08, y, text, va="center", fontsize=8)
    axes.set_xscale("log")
    shown = [x for x in ratios if x > 0] or [1.0]
    highest = max([*shown, *(r["target"] or 0 for r in rows)])
    axes.set_xlim(min([*shown, 0.5]) / 1.5, highest * 25)
    axes.axvline(1.0, color="#555555", linewidth=0.8, linestyle=":")
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_xlabel("ratio ours / baseline (log scale); black tick: target")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", which="both", color="#eeeeee")
    legend = [Patch(color=colour, label=label) for label, colour in _LEGEND]
    axes.legend(handles=legend, loc="lower right", fontsize=8)
    axes.set_axisbelow(True)


def _draw_curve(axes: Any, rows: list[dict[str, Any]], title: str) -> None:
    """Throughput (left axis) and p50/p99 latency (right axis) against connections."""
    rows = sorted(rows, key=lambda r: r["curve"]["connections"])
    connections = [r["curve"]["connections"] for r in rows]
    axes.plot(connections, [r["ours"] for r in rows], "o-", color="#1f6fb2", label="req/s")
    axes.set_xscale("log", base=2)
    axes.set_xticks(connections, [str(n) for n in connections])
    axes.set_xlabel("wrk connections (POST /compute, loopback)")
    axes.set_ylabel("requests/s", color="#1f6fb2")
    axes.set_ylim(bottom=0)
    axes.grid(color="#eeeeee")
    latency = axes.twinx()
    for key, style, colour in (("p50_ms", "s--", "#e08a1e"), ("p99_ms", "^--", "#d1495b")):
        values = [r["curve"][key] for r in rows]
        latency.plot(connections, values, style, color=colour, label=key.replace("_ms", ""))
        for x, value in zip(connections, values, strict=True):
            latency.annotate(
                _short(value),
                (x, value),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=colour,
            )
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log scale)")
    handles = axes.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="upper left", fontsize=8)
    axes.set_title(title, fontsize=10)


def _pair(row: dict[str, Any]) -> str:
    return f"{_short(row['ours'])} vs {_short(row['baseline'])} {row['unit']}"


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
