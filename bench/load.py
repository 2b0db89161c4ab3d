"""The load curve: ``POST /compute`` throughput and latency at 1, 8, 64 and 256 connections.

The throughput rows run at one load (32 connections); this shows the whole
curve on loopback, so that a user sees where latency starts to climb: wrk
with each count of :data:`LEVELS` connections (one thread), each level run
:data:`~bench.core.RUNS` times, the levels interleaved. Each row compares a
level's throughput with the single connection's (informational) and carries
the level's latency in its ``curve`` entry; :mod:`bench.chart` draws them as
lines under the bars.

Latency comes from a probe, not from wrk: while wrk runs, one more
keep-alive connection from this process sends :data:`PROBE_RATE` requests
per second on a fixed schedule and times each (``perf_counter`` around the
request and the whole answer), so each sample is what one more request meets
at that load, queueing included. wrk's own percentiles of unpaced runs are
not used because they do not add up here: at one connection, wrk 4.1 reported
a mean latency of 1.0 ms over 14,633 requests in a 3 s run (14.6 s of
latency in 3 s of one connection), with a p99 of 34 ms, where this probe saw
a p99 of 0.35 ms. Each row also gives the mean latency that Little's law
implies for wrk's closed loop (connections / throughput), which needs no
per-request timing.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Final

import orjson

from .core import RUNS
from .http import WARMUP_SECONDS, WrkRun, check_answer, percentile, run_wrk
from .report import comparison
from .servers import Server, knob

__all__ = ["LEVELS", "PROBE_RATE", "SECONDS", "load_rows", "probed_run"]

LEVELS: Final = (1, 8, 64, 256)
SECONDS: Final = knob("LOAD_SECONDS", 5, 1)
#: Requests per second of the latency probe (its own connection, a fixed schedule).
PROBE_RATE: Final = 100.0
_BODY: Final = orjson.dumps({"payload": [5, 6]})
_HEADERS: Final = {"Content-Type": "application/json"}


class _Probe(threading.Thread):
    """Timed ``POST /compute`` calls at :data:`PROBE_RATE` until :meth:`stop`."""

    def __init__(self, gateway: Server) -> None:
        super().__init__(name="latency-probe", daemon=True)
        self.gateway = gateway
        self.latencies_ms: list[float] = []
        self.error: BaseException | None = None
        self._finished = threading.Event()

    def stop(self) -> None:
        self._finished.set()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=30)
        try:
            period = 1 / PROBE_RATE
            start = time.perf_counter()
            slot = 0
            while not self._finished.wait(max(0.0, start + slot * period - time.perf_counter())):
                slot += 1
                sent = time.perf_counter()
                conn.request("POST", "/compute", body=_BODY, headers=_HEADERS)
                response = conn.getresponse()
                answer = response.read()
                self.latencies_ms.append((time.perf_counter() - sent) * 1000)
                if response.status != 200 or orjson.loads(answer).get("result") != 11:
                    raise RuntimeError(f"the probe got {response.status}: {answer[:200]!r}")
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


def probed_run(
    wrk: str, gateway: Server, body: Path, *, connections: int, seconds: float
) -> tuple[WrkRun, list[float]]:
    """One wrk run of ``connections`` with the latency probe alongside; its latencies (ms) sorted.

    Raises:
        RuntimeError: wrk failed (see :func:`bench.http.run_wrk`), or the probe
            got a wrong answer or none.
    """
    probe = _Probe(gateway)
    probe.start()
    try:
        run = run_wrk(
            wrk, gateway.url + "/compute", body, seconds=seconds, connections=connections, threads=1
        )
    finally:
        probe.stop()
        probe.join(60)
    if probe.error is not None:
        raise RuntimeError(f"latency probe failed: {probe.error!r}") from probe.error
    if not probe.latencies_ms:
        raise RuntimeError("the latency probe made no call")
    return run, sorted(probe.latencies_ms)


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
            run, latencies = probed_run(wrk, gateway, body, connections=n, seconds=seconds)
            gateway.check_alive()
            rates[n].append(run.rate)
            p50[n].append(percentile(latencies, 0.50))
            p99[n].append(percentile(latencies, 0.99))
    first = levels[0]
    rows = []
    for n in levels:
        m50, m99 = statistics.median(p50[n]), statistics.median(p99[n])
        mean = n / statistics.median(rates[n]) * 1000
        row = comparison(
            f"load curve: /compute at {n} connections vs {first} (loopback)",
            rates[n],
            rates[first],
            None,
            unit="req/s",
            note=f"{n} connections: probe p50 {m50:.2f} ms, p99 {m99:.2f} ms; "
            f"mean {mean:.2f} ms by Little's law",
        )
        row["curve"] = {
            "connections": n,
            "p50_ms": round(m50, 3),
            "p99_ms": round(m99, 3),
            "p50_ms_runs": [round(x, 3) for x in p50[n]],
            "p99_ms_runs": [round(x, 3) for x in p99[n]],
            "mean_ms_littles_law": round(mean, 3),
        }
        rows.append(row)
    return rows
