"""Print the table of every row and write bench/results.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  {'ours':>10}  {'baseline':>10}  {'unit':<8}  {'ratio':>6}  target")
    for r in rows:
        mark = "ok" if r["met"] else "MISSED"
        bound = ">=" if r["higher_is_better"] else "<="
        print(
            f"{r['row']:<{width}}  {r['ours']:>10.1f}  {r['baseline']:>10.1f}  {r['unit']:<8}  "
            f"{r['ratio']:>5.2f}x  {bound} {r['target']}x {mark}"
        )


def write_results(rows: list[dict[str, Any]], runs: int) -> Path:
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "runs_per_row": runs,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return RESULTS


def comparison(
    name: str,
    ours_runs: list[float],
    baseline_runs: list[float],
    target: float,
    *,
    unit: str,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """One row of the table: the medians of both sides, their ratio and the target.

    The ratio is always ours / baseline; with ``higher_is_better`` false (latency,
    memory) the target is an upper bound on it instead of a lower one.
    """
    ours = statistics.median(ours_runs)
    baseline = statistics.median(baseline_runs)
    ratio = ours / baseline
    return {
        "row": name,
        "unit": unit,
        "ours": round(ours, 3),
        "baseline": round(baseline, 3),
        "ours_runs": [round(r, 3) for r in ours_runs],
        "baseline_runs": [round(r, 3) for r in baseline_runs],
        "ratio": round(ratio, 3),
        "target": target,
        "higher_is_better": higher_is_better,
        "met": ratio >= target if higher_is_better else ratio <= target,
    }
