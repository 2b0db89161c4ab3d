"""The HTTP rows: throughput against the ceiling and the naive bridge, latency, large payloads.

HTTP load comes from wrk (C, so the load generator is not the bottleneck),
driven by ``bench/wrk/compute.lua``: every request is ``POST`` of the same
JSON body, and the script prints its summary as one JSON line. The direct
side of each comparison is the stdlib ``Client`` from this process: that is
what a Python program calling the backend without the gateway would do.

Rows (each side run :data:`~bench.core.RUNS` times, interleaved, medians compared):

* **ceiling**: gateway ``POST /compute`` against ``POST /bench/noop`` in the
  same process (:mod:`bench.ceiling_app`), wrk, 32 connections; target >= 0.8.
* **naive bridge**: the same gateway runs against :mod:`bench.naive_app`;
  target >= 5.
* **direct**: the same gateway runs against stdlib ``Client`` round trips on
  one connection, the protocol's floor; informational.
* **latency**: p50 and p99 at a fixed rate (200 requests/s), one connection
  each, gateway (wrk, paced by the script's ``delay()``) against the stdlib
  ``Client`` paced the same way; target: p50 added <= 1 ms.
* **large payloads**: a 10 MiB ``{"$bytes": ...}`` payload echoed by the
  demo's ``echo`` op, one request at a time, MB/s of payload through the
  gateway (a count of calls sized to about 5 s, so that wrk's clock stops
  at the last answer) against the stdlib ``Client`` sending the same bytes;
  target >= 0.5.

Before measuring, each endpoint is called once and its answer checked, and
every wrk run must end without a socket error or a non-2xx answer.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any, Final

import orjson

from .ceiling_app import NOOP_PATH
from .core import RUNS
from .report import comparison
from .servers import Backend, Server, http_call, knob

__all__ = [
    "WrkRun",
    "check_answer",
    "direct_round_trips",
    "large_rows",
    "latency_rows",
    "percentile",
    "run_wrk",
    "throughput_rows",
]

WRK_SCRIPT: Final = Path(__file__).with_name("wrk") / "compute.lua"
CONNECTIONS: Final = 32
#: One wrk thread drives 32 connections at well over 10,000 requests/s and
#: leaves more of the two cores to the servers than wrk's default of two.
THREADS: Final = int(knob("WRK_THREADS", 1, 1))
SECONDS: Final = knob("HTTP_SECONDS", 5, 1)
WARMUP_SECONDS: Final = knob("WARMUP_SECONDS", 1, 0.5)
DIRECT_CALLS: Final = int(knob("DIRECT_CALLS", 20_000, 2_000))
LATENCY_RATE: Final = knob("LATENCY_RATE", 200, 200)
LATENCY_SECONDS: Final = knob("LATENCY_SECONDS", 5, 1)
LATENCY_BUDGET_MS: Final = 1.0
LARGE_MIB: Final = knob("LARGE_MIB", 10, 2)
LARGE_SECONDS: Final = knob("LARGE_SECONDS", 5, 1)
_COMPUTE_BODY: Final = orjson.dumps({"payload": [5, 6]})
_MB: Final = 1e6


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run reported: completed requests, seconds, latency percentiles (µs)."""

    requests: int
    seconds: float
    latency_us: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    wrk: str,
    url: str,
    body: Path,
    *,
    seconds: float,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    rate: float | None = None,
    limit: int | None = None,
    timeout: float = 10.0,
) -> WrkRun:
    """Run wrk for ``seconds`` against ``url``, POSTing ``body``, and parse its summary.

    ``rate`` paces each thread at that many requests per second; ``limit``
    ends the run after that many responses (``seconds`` is then only a bound).

    Raises:
        RuntimeError: wrk failed, completed no request, or saw any socket
            error or non-2xx answer.
    """
    env = {**os.environ, "BENCH_WRK_BODY": str(body)}
    if rate is not None:
        env["BENCH_WRK_RATE"] = repr(rate)
    if limit is not None:
        env["BENCH_WRK_LIMIT"] = str(limit)
    threads = min(threads, connections)
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    command += [f"--timeout={max(1, round(timeout))}s", "-s", str(WRK_SCRIPT), url]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + timeout + 60
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_WRK ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"wrk failed (status {done.returncode}) against {url}:\n{done.stdout}{done.stderr}"
        )
    summary = json.loads(lines[-1].removeprefix("BENCH_WRK "))
    errors = {k: v for k, v in summary["errors"].items() if v}
    if errors or summary["requests"] == 0:
        raise RuntimeError(
            f"wrk against {url}: {summary['requests']} requests, errors {errors} "
            "(status counts non-2xx answers)"
        )
    return WrkRun(summary["requests"], summary["duration_us"] / 1e6, summary["latency_us"])


def check_answer(server: Server, path: str, body: bytes, expected: object) -> None:
    """One request, outside any measurement: the endpoint must answer ``expected``."""
    status, reply = http_call(server.url, "POST", path, body, timeout=120)
    result = orjson.loads(reply).get("result") if status == 200 else None
    if status != 200 or result != expected:
        raise RuntimeError(f"POST {server.url}{path} answered {status}: {reply[:300]!r}")


def direct_round_trips(backend: Backend, calls: int = DIRECT_CALLS) -> float:
    """Round trips per second of the stdlib ``Client`` on one connection, ``[5, 6]`` each."""
    with Client(backend.stdlib_address, authkey=backend.authkey.encode()) as conn:
        for _ in range(100):  # warm-up
            conn.send([5, 6])
            conn.recv()
        started = time.perf_counter()
        for _ in range(calls):
            conn.send([5, 6])
            if conn.recv() != 11:
                raise RuntimeError("the demo backend answered [5, 6] wrongly")
        return calls / (time.perf_counter() - started)


def throughput_rows(
    wrk: str, gateway: Server, naive: Server, backend: Backend, directory: Path
) -> list[dict[str, Any]]:
    """Rows 1 to 4: gateway against its ceiling, the naive bridge, and the direct floor."""
    body = directory / "compute.json"
    body.write_bytes(_COMPUTE_BODY)
    check_answer(gateway, "/compute", _COMPUTE_BODY, 11)
    check_answer(gateway, NOOP_PATH, _COMPUTE_BODY, [5, 6])
    check_answer(naive, "/compute", _COMPUTE_BODY, 11)
    sides = {
        "ceiling": (gateway, NOOP_PATH),
        "gateway": (gateway, "/compute"),
        "naive": (naive, "/compute"),
    }
    for server, path in sides.values():
        # Grows the gateway's pool to its size and warms every code path.
        run_wrk(wrk, server.url + path, body, seconds=WARMUP_SECONDS)
    runs: dict[str, list[float]] = {name: [] for name in sides}
    direct: list[float] = []
    for _ in range(RUNS):
        for name, (server, path) in sides.items():
            runs[name].append(run_wrk(wrk, server.url + path, body, seconds=SECONDS).rate)
            server.check_alive()
        direct.append(direct_round_trips(backend))
    load = f"wrk {CONNECTIONS} connections"
    return [
        comparison(
            f"HTTP /compute vs no-op route, same process ({load})",
            runs["gateway"],
            runs["ceiling"],
            0.8,
            unit="req/s",
        ),
        comparison(
            "HTTP /compute vs naive bridge (Client per request, thread pool)",
            runs["gateway"],
            runs["naive"],
            5.0,
            unit="req/s",
        ),
        comparison(
            "HTTP /compute vs direct stdlib Client (1 connection, protocol floor)",
            runs["gateway"],
            direct,
            None,
            unit="calls/s",
        ),
    ]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (wrk reports the same kind)."""
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def paced_direct(backend: Backend, rate: float, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) of stdlib ``Client`` round trips sent on a fixed schedule of ``rate``/s.

    Like the wrk script, each call waits for its slot of the schedule and a
    late call goes at once; the clock runs from the send to the reply.
    """
    period = 1.0 / rate
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    with Client(backend.stdlib_address, authkey=backend.authkey.encode()) as conn:
        conn.send([5, 6])
        conn.recv()
        start = time.perf_counter()
        for i in range(count):
            wait = start + i * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            conn.send([5, 6])
            if conn.recv() != 11:
                raise RuntimeError("the demo backend answered [5, 6] wrongly")
            latencies.append((time.perf_counter() - sent) * 1000)
    latencies.sort()
    return percentile(latencies, 0.50), percentile(latencies, 0.99)


def latency_rows(
    wrk: str,
    gateway: Server,
    backend: Backend,
    directory: Path,
    *,
    where: str = "",
    seconds: float = LATENCY_SECONDS,
    runs: int = RUNS,
) -> list[dict[str, Any]]:
    """Row 5: p50 and p99 at :data:`LATENCY_RATE` requests/s, gateway against direct.

    ``where`` starts each row's label (the ``remote`` rows say which link);
    ``seconds`` and ``runs`` size it (smaller in the harness's own tests).
    """
    body = directory / "compute.json"
    body.write_bytes(_COMPUTE_BODY)
    url = gateway.url + "/compute"

    def paced_gateway(seconds: float) -> WrkRun:
        return run_wrk(wrk, url, body, seconds=seconds, connections=1, rate=LATENCY_RATE)

    paced_gateway(WARMUP_SECONDS)
    g50: list[float] = []
    g99: list[float] = []
    d50: list[float] = []
    d99: list[float] = []
    rates: list[float] = []
    for _ in range(runs):
        p50, p99 = paced_direct(backend, LATENCY_RATE, seconds)
        d50.append(p50)
        d99.append(p99)
        run = paced_gateway(seconds)
        gateway.check_alive()
        g50.append(run.latency_us["p50"] / 1000)
        g99.append(run.latency_us["p99"] / 1000)
        rates.append(run.rate)
    at = f"{LATENCY_RATE:g} req/s, 1 connection"
    note = f"gateway side ran at {statistics.median(rates):.0f} req/s (wrk, paced)"
    return [
        comparison(
            f"{where}latency p50 at {at}: gateway vs direct Client",
            g50,
            d50,
            None,
            unit="ms",
            higher_is_better=False,
            note=note,
        ),
        comparison(
            f"{where}latency p50 added by the gateway (budget {LATENCY_BUDGET_MS:g} ms)",
            [g - d for g, d in zip(g50, d50, strict=True)],
            [LATENCY_BUDGET_MS] * runs,
            1.0,
            unit="ms",
            higher_is_better=False,
        ),
        comparison(
            f"{where}latency p99 at {at}: gateway vs direct Client",
            g99,
            d99,
            None,
            unit="ms",
            higher_is_better=False,
        ),
    ]


def _direct_large(backend: Backend, data: bytes, seconds: float) -> float:
    """MB/s of payload echoed by the stdlib ``Client``, one call at a time, for ``seconds``."""
    request = {"op": "echo", "value": data}
    with Client(backend.stdlib_address, authkey=backend.authkey.encode()) as conn:
        conn.send(request)
        if conn.recv() != data:
            raise RuntimeError("the demo backend echoed other bytes")
        calls = 0
        started = time.perf_counter()
        deadline = started + seconds
        while calls < 100_000 and (calls == 0 or time.perf_counter() < deadline):
            conn.send(request)
            reply = conn.recv()
            if type(reply) is not bytes or len(reply) != len(data):
                raise RuntimeError("the demo backend echoed something else")
            calls += 1
        return calls * len(data) / (time.perf_counter() - started) / _MB


def large_rows(
    wrk: str, gateway: Server, backend: Backend, directory: Path
) -> list[dict[str, Any]]:
    """Row 7: a :data:`LARGE_MIB` MiB ``$bytes`` payload echoed, gateway against direct."""
    data = os.urandom(int(LARGE_MIB * 1024 * 1024))
    encoded = base64.b64encode(data).decode("ascii")
    body_bytes = orjson.dumps({"payload": {"op": "echo", "value": {"$bytes": encoded}}})
    body = directory / "large.json"
    body.write_bytes(body_bytes)
    # The gateway answers bytes as {"$bytes": <base64>}: checked once, in full.
    check_answer(gateway, "/compute", body_bytes, {"$bytes": encoded})
    del encoded, body_bytes
    url = gateway.url + "/compute"

    def gateway_calls(count: int) -> WrkRun:
        # Ended by the count, not by -d: wrk's clock then stops at the last
        # answer, where a timed run would lose up to a whole call at its end.
        bound = 60 + 10 * LARGE_SECONDS
        run = run_wrk(wrk, url, body, seconds=bound, connections=1, limit=count, timeout=60)
        gateway.check_alive()
        return run

    # Also a warm-up: sizes the runs to about LARGE_SECONDS each.
    per_call = gateway_calls(2).seconds / 2
    count = max(2, round(LARGE_SECONDS / per_call))
    gateway_runs: list[float] = []
    direct_runs: list[float] = []
    for _ in range(RUNS):
        direct_runs.append(_direct_large(backend, data, LARGE_SECONDS))
        gateway_runs.append(gateway_calls(count).rate * len(data) / _MB)
    return [
        comparison(
            f"{LARGE_MIB:g} MiB $bytes echoed, 1 connection: gateway vs direct Client",
            gateway_runs,
            direct_runs,
            0.5,
            unit="MB/s",
        )
    ]
