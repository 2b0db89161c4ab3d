"""Print the table of every row and write bench/results.json."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["row"]) for r in rows)
    print(f"{'row':<{width}}  {'ours/s':>10}  {'baseline/s':>10}  {'ratio':>6}  target")
    for r in rows:
        mark = "ok" if r["met"] else "MISSED"
        print(
            f"{r['row']:<{width}}  {r['ours_per_s']:>10.0f}  {r['baseline_per_s']:>10.0f}  "
            f"{r['ratio']:>5.2f}x  >= {r['target']}x {mark}"
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
