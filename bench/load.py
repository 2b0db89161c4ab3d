"""The load curve: ``POST /compute`` throughput and latency at 1, 8, 64 and 256 connections.

The throughput rows run at one load (32 connections); this shows the whole
curve on loopback, so that a user sees where latency starts to climb: wrk
with each count of :data:`LEVELS` connections (one thread), each level run
:data:`~bench.core.RUNS` times, the levels interleaved. Each row compares a
level's throughput with the single connection's (informational) and carries
the level's p50 and p99 (wrk's, from the start of writing a request to the
end of its answer) in its ``curve`` entry; :mod:`bench.chart` draws them as
lines under the bars.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Final

import orjson

from .core import RUNS
from .http import WARMUP_SECONDS, check_answer, run_wrk
from .report import comparison
from .servers import Server, knob

__all__ = ["LEVELS", "SECONDS", "load_rows"]

LEVELS: Final = (1, 8, 64, 256)
SECONDS: Final = knob("LOAD_SECONDS", 5, 1)
_BODY: Final = orjson.dumps({"payload": [5, 6]})


def load_rows(
    wrk: str,
    gateway: Server,
    directory: Path,
    *,
    levels: tuple[int, ...] = LEVELS,
    seconds: float = SECONDS,
    runs: int = RUNS,
) -> list[dict[str, Any]]:
    """One row per level of ``levels`` (the first is the reference) against ``gateway``."""
    body = directory / "compute.json"
    body.write_bytes(_BODY)
    check_answer(gateway, "/compute", _BODY, 11)
    url = gateway.url + "/compute"
    # Grows the pool (and uvicorn's buffers) to the highest load first.
    run_wrk(wrk, url, body, seconds=WARMUP_SECONDS, connections=max(levels))
    rates: dict[int, list[float]] = {n: [] for n in levels}
    p50: dict[int, list[float]] = {n: [] for n in levels}
    p99: dict[int, list[float]] = {n: [] for n in levels}
    for _ in range(runs):
        for n in levels:
            run = run_wrk(wrk, url, body, seconds=seconds, connections=n, threads=1)
            gateway.check_alive()
            rates[n].append(run.rate)
            p50[n].append(run.latency_us["p50"] / 1000)
            p99[n].append(run.latency_us["p99"] / 1000)
    first = levels[0]
    rows = []
    for n in levels:
        m50, m99 = statistics.median(p50[n]), statistics.median(p99[n])
        row = comparison(
            f"load curve: /compute at {n} connections vs {first} (loopback)",
            rates[n],
            rates[first],
            None,
            unit="req/s",
            note=f"{n} connections: p50 {m50:.2f} ms, p99 {m99:.2f} ms",
        )
        row["curve"] = {
            "connections": n,
            "p50_ms": round(m50, 3),
            "p99_ms": round(m99, 3),
            "p50_ms_runs": [round(x, 3) for x in p50[n]],
            "p99_ms_runs": [round(x, 3) for x in p99[n]],
        }
        rows.append(row)
    return rows
