"""The ``remote`` rows: backends 0.5 ms away each way (a 1 ms round trip), through a relay.

Every other row runs the backend on the same machine, about 50 us away,
which hides what a deployment pays when the Listener is on another host.
Here each backend sits behind the latency relay (:mod:`bench.relay`), and
every side of a row goes through the same relay, the stdlib floor included.
Each row's note gives the relay's own CPU time per run (user plus system,
from ``/proc``), since on a small machine it competes with what is measured.

1. **The seed's classic server** (``tests/servers/classic.py``: one
   connection at a time, ``x, y = conn.recv(); conn.send(x + y)``, exits on
   any error), ``max_connections = 1``: the stdlib ``Client`` making round
   trips on one connection (the floor), the gateway with ``pipeline = 1``
   and with ``pipeline = 32``, each under wrk with :data:`CONNECTIONS`
   connections. Target: pipelined >= 10x unpipelined. The server can hold
   one connection only, so each gateway run is a fresh gateway, stopped
   (closing its connection cleanly) before the next side runs; the server
   must still be alive at the end of every run.
2. **A threaded server** (the demo backend), ``max_connections = 8``:
   pipelined against unpipelined, informational.
3. **Latency** at :data:`~bench.http.LATENCY_RATE` requests/s through the
   gateway against the stdlib ``Client`` over the same link, as the
   loopback latency rows measure it (:func:`bench.http.latency_rows`);
   target: p50 added <= 1 ms.

Pipelining rows need a gateway that accepts the backend key ``pipeline``;
with one that does not, they are kept in the table as not measured.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from .core import RUNS
from .http import (
    LATENCY_SECONDS,
    WARMUP_SECONDS,
    WrkRun,
    check_answer,
    direct_round_trips,
    latency_rows,
    run_wrk,
)
from .report import comparison, not_measured
from .servers import Backend, Relay, Server, classic_backend, gateway, knob, latency_relay
from .servers import write_config as _write_config

__all__ = [
    "CONNECTIONS",
    "PIPELINE",
    "classic_rows",
    "pipelining_available",
    "remote_rows",
    "threaded_rows",
]

SECONDS: Final = knob("REMOTE_SECONDS", 5, 1)
DIRECT_CALLS: Final = int(knob("REMOTE_DIRECT_CALLS", 3_000, 300))
#: wrk connections of the throughput runs.
CONNECTIONS: Final = 64
#: Requests in flight per connection in the pipelined runs.
PIPELINE: Final = 32
#: ``max_connections`` of the threaded server's gateways.
THREADED_CONNECTIONS: Final = 8
LINK: Final = "remote (1 ms RTT)"
_BODY: Final = orjson.dumps({"payload": [5, 6]})
_T = TypeVar("_T")
_NO_PIPELINE: Final = "this gateway has no backend key 'pipeline' (pipelining not merged yet)"


def pipelining_available() -> bool:
    """Whether this gateway accepts ``pipeline = N`` in a backend table."""
    from gateway.settings import POOL_KEYS

    return "pipeline" in POOL_KEYS


def _options(max_connections: int, pipeline: int | None) -> str:
    lines = [f"max_connections = {max_connections}"]
    if pipeline is not None:
        lines.append(f"pipeline = {pipeline}")
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path, backend: Backend, name: str, *, max_connections: int, pipeline: int | None
) -> Path:
    """A gateway configuration for ``backend`` with these pool settings (no ``pipeline``: None)."""
    options = _options(max_connections, pipeline)
    return _write_config(directory, backend, log_level="warning", name=name, options=options)


class _RelayClock:
    """The relay's CPU seconds spent during each measured run, per side."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.spent: dict[str, list[float]] = {}

    def measure(self, side: str, run: Callable[[], _T]) -> _T:
        before = self.relay.cpu_seconds()
        result = run()
        self.spent.setdefault(side, []).append(round(self.relay.cpu_seconds() - before, 3))
        return result

    def annotate(self, row: dict[str, Any], ours: str, baseline: str, seconds: str) -> None:
        """Add the relay's CPU time of both sides to ``row``: its note, ``relay_cpu_seconds``."""
        row["relay_cpu_seconds"] = {"ours": self.spent[ours], "baseline": self.spent[baseline]}
        text = (
            f"relay CPU per run: {statistics.median(self.spent[ours]):.2f} s (ours), "
            f"{statistics.median(self.spent[baseline]):.2f} s (baseline), of {seconds}"
        )
        row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def _wrk_run(wrk: str, server: Server, body: Path, seconds: float) -> WrkRun:
    return run_wrk(wrk, server.url + "/compute", body, seconds=seconds, connections=CONNECTIONS)


def classic_rows(
    wrk: str,
    directory: Path,
    *,
    pipeline: bool | None = None,
    seconds: float = SECONDS,
    direct_calls: int = DIRECT_CALLS,
    runs: int = RUNS,
) -> list[dict[str, Any]]:
    """Row 1: the classic one-connection server through the relay (see the module docstring).

    ``pipeline`` None: measure the pipelined side when the gateway accepts the
    key (False: leave it not measured). The other arguments size the row.

    Raises:
        ServerError: the classic server (or a gateway) died during a run.
    """
    pipelined = pipelining_available() if pipeline is None else pipeline
    body = directory / "compute.json"
    body.write_bytes(_BODY)
    with classic_backend(directory) as server, latency_relay(server.address, directory) as relay:
        remote = server.via(relay)
        clock = _RelayClock(relay)
        configs = {
            "unpipelined": write_config(
                directory, remote, "classic-1", max_connections=1, pipeline=1 if pipelined else None
            )
        }
        if pipelined:
            configs["pipelined"] = write_config(
                directory, remote, "classic-32", max_connections=1, pipeline=PIPELINE
            )

        def gateway_run(side: str) -> float:
            with gateway(configs[side], remote, directory, name=f"gateway-{side}") as gw:
                check_answer(gw, "/compute", _BODY, 11)
                _wrk_run(wrk, gw, body, WARMUP_SECONDS)
                run = clock.measure(side, lambda: _wrk_run(wrk, gw, body, seconds))
                gw.check_alive()
            server.check_alive()  # stopping the gateway closed its connection cleanly
            return run.rate

        rates: dict[str, list[float]] = {"direct": [], **{side: [] for side in configs}}
        for _ in range(runs):
            rates["direct"].append(
                clock.measure("direct", lambda: direct_round_trips(remote, direct_calls))
            )
            server.check_alive()
            for side in configs:
                rates[side].append(gateway_run(side))
        # The last gateway has gone too: the server must still serve a new client.
        direct_round_trips(remote, 10)
        server.check_alive()
    name = f"{LINK}, classic 1-connection server"
    load = f"wrk {CONNECTIONS} connections"
    of = f"{seconds:g} s runs ({direct_calls} calls direct)"
    rows: list[dict[str, Any]] = []
    if pipelined:
        row = comparison(
            f"{name}: gateway pipelined ({PIPELINE}) vs unpipelined, {load}",
            rates["pipelined"],
            rates["unpipelined"],
            10.0,
            unit="req/s",
        )
        clock.annotate(row, "pipelined", "unpipelined", of)
        rows.append(row)
    else:
        rows.append(
            not_measured(
                f"{name}: gateway pipelined ({PIPELINE}) vs unpipelined, {load}",
                _NO_PIPELINE,
                10.0,
                unit="req/s",
            )
        )
    row = comparison(
        f"{name}: gateway unpipelined ({load}) vs stdlib Client (1 connection)",
        rates["unpipelined"],
        rates["direct"],
        None,
        unit="req/s",
    )
    clock.annotate(row, "unpipelined", "direct", of)
    rows.append(row)
    if pipelined:
        row = comparison(
            f"{name}: gateway pipelined ({load}) vs stdlib Client (1 connection)",
            rates["pipelined"],
            rates["direct"],
            None,
            unit="req/s",
        )
        clock.annotate(row, "pipelined", "direct", of)
        rows.append(row)
    return rows


def _interleaved(
    wrk: str, clock: _RelayClock, sides: dict[str, Server], body: Path, seconds: float, runs: int
) -> dict[str, list[float]]:
    """Throughput runs of every side of ``sides``, ``runs`` each, interleaved."""
    for server in sides.values():
        _wrk_run(wrk, server, body, WARMUP_SECONDS)
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(runs):
        for side, server in sides.items():

            def measured(server: Server = server) -> WrkRun:
                return _wrk_run(wrk, server, body, seconds)

            rates[side].append(clock.measure(side, measured).rate)
            server.check_alive()
    return rates


def threaded_rows(
    wrk: str,
    backend: Backend,
    directory: Path,
    *,
    pipeline: bool | None = None,
    seconds: float = SECONDS,
    latency_seconds: float = LATENCY_SECONDS,
    runs: int = RUNS,
) -> list[dict[str, Any]]:
    """Rows 2 and 3: the threaded demo backend through a relay; pipelining, then latency.

    ``pipeline`` as for :func:`classic_rows`; the other arguments size the rows.
    """
    pipelined = pipelining_available() if pipeline is None else pipeline
    body = directory / "compute.json"
    body.write_bytes(_BODY)
    connections = THREADED_CONNECTIONS
    label = (
        f"{LINK}, threaded server, max_connections {connections}: "
        f"gateway pipelined ({PIPELINE}) vs unpipelined, wrk {CONNECTIONS} connections"
    )
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(
            latency_relay(backend.address, directory, name="relay-threaded")
        )
        remote = backend.via(relay)
        clock = _RelayClock(relay)
        sides: dict[str, Server] = {}
        for side, depth in (("unpipelined", 1), ("pipelined", PIPELINE)):
            if not pipelined and depth > 1:
                continue
            config = write_config(
                directory,
                remote,
                f"threaded-{depth}",
                max_connections=connections,
                pipeline=depth if pipelined else None,
            )
            server = stack.enter_context(
                gateway(config, remote, directory, name=f"gateway-threaded-{depth}")
            )
            check_answer(server, "/compute", _BODY, 11)
            sides[side] = server
        if pipelined:
            rates = _interleaved(wrk, clock, sides, body, seconds, runs)
            row = comparison(label, rates["pipelined"], rates["unpipelined"], None, unit="req/s")
            clock.annotate(row, "pipelined", "unpipelined", f"{seconds:g} s runs")
        else:
            row = not_measured(label, _NO_PIPELINE, None, unit="req/s")
        where = f"{LINK}: "
        latency = latency_rows(
            wrk,
            sides["unpipelined"],
            remote,
            directory,
            where=where,
            seconds=latency_seconds,
            runs=runs,
        )
        return [row, *latency]
    raise AssertionError("unreachable")


def remote_rows(wrk: str, backend: Backend, directory: Path) -> list[dict[str, Any]]:
    """Every ``remote`` row: the classic server's, then the threaded demo ``backend``'s."""
    return classic_rows(wrk, directory) + threaded_rows(wrk, backend, directory)
