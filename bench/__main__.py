"""``make bench``: run every benchmark row, print one table, write bench/results.json."""

from __future__ import annotations

from .core import RUNS, core_rows
from .report import print_table, write_results


def main() -> int:
    rows = core_rows()
    print_table(rows)
    print(f"wrote {write_results(rows, RUNS)}")
    return 0


raise SystemExit(main())
