"""bench/results.png: one bar per row, its ratio against its target, on a log scale.

Green bars met their target, red ones missed it, grey ones are informational
(no target). The target is a black tick across the bar; the label at the end
of the bar gives the ratio and the target with its direction (``>= 0.8x``
for throughput, ``<= 1.1x`` for latency and memory). A log scale keeps a
0.06x and a 6x row equally readable.
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
    from matplotlib.patches import Patch

    from .report import target_text

    count = len(rows)
    figure, axes = plt.subplots(figsize=(12, 1.2 + 0.55 * count))
    labels = [textwrap.fill(r["row"], 58) for r in rows]
    # Ratios can be zero or negative (latency added can be below zero): clip for the log axis.
    ratios = [max(r["ratio"], 1e-3) for r in rows]
    positions = list(range(count))[::-1]  # first row on top
    axes.barh(positions, ratios, color=[_COLOURS[r["met"]] for r in rows], height=0.6)
    for y, r, shown in zip(positions, rows, ratios, strict=True):
        if r["target"] is not None:
            axes.plot([r["target"]] * 2, [y - 0.38, y + 0.38], color="black", linewidth=2)
        text = f"{r['ratio']:.2f}x  ({target_text(r)}; {_pair(r)})"
        # After the bar or the target tick, whichever ends further right.
        axes.text(max(shown, r["target"] or 0) * 1.08, y, text, va="center", fontsize=8)
    axes.set_xscale("log")
    highest = max([*ratios, *(r["target"] or 0 for r in rows)])
    axes.set_xlim(min([*ratios, 0.5]) / 1.5, highest * 25)
    axes.axvline(1.0, color="#555555", linewidth=0.8, linestyle=":")
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_xlabel("ratio ours / baseline (log scale); black tick: target")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", which="both", color="#eeeeee")
    legend = [Patch(color=colour, label=label) for label, colour in _LEGEND]
    axes.legend(handles=legend, loc="lower right", fontsize=8)
    axes.set_axisbelow(True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _pair(row: dict[str, Any]) -> str:
    return f"{_short(row['ours'])} vs {_short(row['baseline'])} {row['unit']}"


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
