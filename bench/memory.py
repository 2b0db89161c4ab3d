"""The memory rows: the gateway's RSS idle, after many calls, and holding idle WebSockets.

Each run starts a fresh gateway the way users do (``python -m gateway
--config ...``, :func:`bench.servers.cli_gateway`) and reads its ``VmRSS``
from ``/proc/<pid>/status``:

1. idle, once ``/readyz`` answers 200;
2. after the first :data:`FIRST_CALLS` calls of ``POST /compute``;
3. after :data:`CALLS` calls in all (wrk, 32 connections; the script ends the
   run after the given number of responses);
4. with :data:`SOCKETS` idle WebSocket connections to ``/ws`` open (from this
   process, whose open-file limit is raised first; the gateway, started
   afterwards, inherits the raised limit), after one call on the first and
   the last of them shows they are served.

Targets: RSS after all the calls within 10% of RSS after the first ones (the
steady state does not grow), and idle RSS under :data:`IDLE_BUDGET_MIB`. The
sockets' row is informational.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from .core import RUNS
from .http import run_wrk
from .report import comparison
from .servers import Backend, Server, cli_gateway, knob, raise_open_files, rss_mib

__all__ = ["CALLS", "FIRST_CALLS", "IDLE_BUDGET_MIB", "SOCKETS", "memory_rows"]

FIRST_CALLS: Final = int(knob("MEMORY_FIRST_CALLS", 1_000, 1_000))
CALLS: Final = int(knob("MEMORY_CALLS", 100_000, 5_000))
SOCKETS: Final = int(knob("MEMORY_SOCKETS", 1_000, 100))
IDLE_BUDGET_MIB: Final = 80.0
#: WebSocket handshakes in progress at once while opening the sockets.
_OPENING: Final = 50


def _calls(wrk: str, server: Server, body: Path, count: int) -> int:
    """Make ``count`` calls with wrk (32 connections); return how many completed."""
    # 300 calls/s would be slow even here: a bound, not an estimate.
    # One thread: with several, the first to reach the count ends the run.
    run = run_wrk(
        wrk, server.url + "/compute", body, seconds=60 + count / 300, threads=1, limit=count
    )
    if run.requests < count:
        raise RuntimeError(f"wrk completed {run.requests} of {count} calls")
    return run.requests


async def _hold_sockets(url: str, count: int, pid: int) -> float:
    """Open ``count`` sockets to ``url``, check two of them, return ``pid``'s RSS meanwhile."""
    sockets: list[ClientConnection] = []
    opening = asyncio.Semaphore(_OPENING)

    async def open_one() -> None:
        async with opening:
            sockets.append(
                await connect(url, compression=None, ping_interval=None, open_timeout=30)
            )

    try:
        async with asyncio.timeout(60 + count / 10):
            async with asyncio.TaskGroup() as group:
                for _ in range(count):
                    group.create_task(open_one())
            for ident, ws in enumerate((sockets[0], sockets[-1])):
                await ws.send(orjson.dumps({"id": ident, "payload": [5, 6]}).decode())
                reply = orjson.loads(await ws.recv())
                if reply != {"id": ident, "result": 11}:
                    raise RuntimeError(f"/ws answered {reply!r}")
        return rss_mib(pid)
    finally:
        async with asyncio.timeout(30):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def _one_run(
    wrk: str, config: Path, backend: Backend, directory: Path, body: Path
) -> dict[str, float]:
    with cli_gateway(config, backend, directory) as server:
        figures = {"idle": rss_mib(server.pid)}
        done = _calls(wrk, server, body, FIRST_CALLS)
        figures["first"] = rss_mib(server.pid)
        done += _calls(wrk, server, body, CALLS - done)
        figures["all"] = rss_mib(server.pid)
        url = server.url.replace("http://", "ws://", 1) + "/ws"
        figures["sockets"] = uvloop.run(_hold_sockets(url, SOCKETS, server.pid))
        server.check_alive()
        return figures


def memory_rows(wrk: str, config: Path, backend: Backend, directory: Path) -> list[dict[str, Any]]:
    """Row 8: RSS idle, after :data:`FIRST_CALLS` and :data:`CALLS` calls, with idle sockets."""
    if CALLS <= FIRST_CALLS:
        raise ValueError("BENCH_MEMORY_CALLS must be larger than BENCH_MEMORY_FIRST_CALLS")
    # Each socket is a descriptor here and in the gateway; the default soft
    # limit (often 1024) would stop short of a thousand.
    raise_open_files(SOCKETS + 1024)
    body = directory / "memory.json"
    body.write_bytes(orjson.dumps({"payload": [5, 6]}))
    runs = [_one_run(wrk, config, backend, directory, body) for _ in range(RUNS)]

    def series(key: str) -> list[float]:
        return [run[key] for run in runs]

    per_socket = [
        (run["sockets"] - run["all"]) * 1024 / SOCKETS for run in runs
    ]  # KiB each, median below
    per_socket.sort()
    return [
        comparison(
            f"memory: gateway RSS idle after start (budget {IDLE_BUDGET_MIB:g} MiB)",
            series("idle"),
            [IDLE_BUDGET_MIB] * RUNS,
            1.0,
            unit="MiB",
            higher_is_better=False,
        ),
        comparison(
            f"memory: RSS after {CALLS:,} calls vs after the first {FIRST_CALLS:,}",
            series("all"),
            series("first"),
            1.10,
            unit="MiB",
            higher_is_better=False,
        ),
        comparison(
            f"memory: RSS with {SOCKETS:,} idle WebSockets vs without",
            series("sockets"),
            series("all"),
            None,
            unit="MiB",
            higher_is_better=False,
            note=f"about {per_socket[len(per_socket) // 2]:.0f} KiB of gateway RSS per "
            "idle WebSocket (median of the runs)",
        ),
    ]
