"""The table: :func:`comparison` builds a row, :func:`print_table` prints the rows.

:func:`write_results` writes them to bench/results.json with the machine,
the versions and the settings of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS",
    "comparison",
    "machine",
    "not_measured",
    "print_table",
    "target_text",
    "write_results",
]

RESULTS = Path(__file__).with_name("results.json")


def _figure(value: float) -> str:
    """A figure with as many decimals as its size deserves."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def target_text(row: dict[str, Any]) -> str:
    """``">= 0.8x ok"``, ``"<= 1.1x MISSED"``, ``"info"`` (informational) or ``"not measured"``."""
    if row["ratio"] is None:
        return "not measured"
    if row["target"] is None:
        return "info"
    bound = ">=" if row["higher_is_better"] else "<="
    return f"{bound} {row['target']:g}x {'ok' if row['met'] else 'MISSED'}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one line per row; notes follow the table, numbered."""
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  {'ours':>10}  {'baseline':>10}  {'unit':<7}  {'ratio':>7}  target")
    notes = []
    for r in rows:
        mark = ""
        if r.get("note"):
            notes.append(r["note"])
            mark = f"  [{len(notes)}]"
        if r["ratio"] is None:
            print(f"{r['row']:<{width}}  {'-':>10}  {'-':>10}  {r['unit']:<7}  {'-':>7}  ", end="")
        else:
            print(
                f"{r['row']:<{width}}  {_figure(r['ours']):>10}  {_figure(r['baseline']):>10}  "
                f"{r['unit']:<7}  {r['ratio']:>6.2f}x  ",
                end="",
            )
        print(f"{target_text(r)}{mark}")
    for number, note in enumerate(notes, 1):
        print(f"[{number}] {note}")


def write_results(
    rows: list[dict[str, Any]],
    runs: int,
    *,
    versions: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    seconds: float | None = None,
    load_at_start: list[float] | None = None,
) -> Path:
    """Write the rows, the machine, the versions and the run's settings to ``RESULTS``."""
    info = machine()
    if load_at_start is not None:
        info["load_average_at_start"] = [round(x, 2) for x in load_at_start]
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "versions": versions or {"python": platform.python_version()},
        "runs_per_row": runs,
    }
    if settings is not None:
        report["settings"] = settings
    if seconds is not None:
        report["total_seconds"] = round(seconds, 1)
    report["rows"] = rows
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return RESULTS


def machine() -> dict[str, Any]:
    """What the figures depend on: platform, CPUs, memory, and the load while measuring."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mib"] = int(line.split()[1]) // 1024
                break
    with contextlib.suppress(OSError):
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return info


def comparison(
    name: str,
    ours_runs: list[float],
    baseline_runs: list[float],
    target: float | None,
    *,
    unit: str,
    higher_is_better: bool = True,
    note: str | None = None,
) -> dict[str, Any]:
    """One row of the table: the medians of both sides, their ratio and the target.

    The ratio is always ours / baseline; with ``higher_is_better`` false (latency,
    memory) the target is an upper bound on it instead of a lower one. A
    ``target`` of None marks an informational row: ``met`` is then None too.
    ``note`` is a short remark printed with the row (e.g. the rate achieved).
    """
    ours = statistics.median(ours_runs)
    baseline = statistics.median(baseline_runs)
    ratio = ours / baseline
    met = None
    if target is not None:
        met = ratio >= target if higher_is_better else ratio <= target
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
        "met": met,
        "note": note,
    }


def not_measured(
    name: str, why: str, target: float | None, *, unit: str, higher_is_better: bool = True
) -> dict[str, Any]:
    """A row that this run could not measure (``why`` says so), kept so that it is not forgotten.

    Its figures, ratio and ``met`` are None; ``note`` is ``why``.
    """
    return {
        "row": name,
        "unit": unit,
        "ours": None,
        "baseline": None,
        "ours_runs": [],
        "baseline_runs": [],
        "ratio": None,
        "target": target,
        "higher_is_better": higher_is_better,
        "met": None,
        "note": f"not measured: {why}",
    }
