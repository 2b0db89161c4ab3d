"""The WebSocket rows: multiplexed calls per second on one socket, gateway against an echo server.

One ``websockets`` asyncio client (on uvloop, in this process) keeps
:data:`WINDOW` calls ``{"id": n, "payload": [5, 6]}`` in flight on one
socket: it sends that many, then one more for each reply, until
:data:`CALLS` replies have come back. The gateway's ``/ws`` runs each through
the pool to the demo backend (reply ``{"id": n, "result": 11}``); the plain
echo server (:mod:`bench.echo_ws`) answers ``{"id": n, "result": [5, 6]}``
with no backend. Every reply is checked. Two gateways run side by side: the
bench's own (the backend with the default ``pipeline = 1``; target: at least
0.7x the echo server) and one whose demo backend has ``pipeline =``
:data:`PIPELINE` (target: at least 0.35x); the runs of the three sides are
interleaved.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson
import uvloop
from websockets.asyncio.client import connect

from .core import RUNS
from .report import comparison
from .servers import Server, knob

__all__ = ["CALLS", "PIPELINE", "WINDOW", "calls_per_second", "ws_rows"]

CALLS: Final = int(knob("WS_CALLS", 50_000, 2_000))
WINDOW: Final = 64
#: The demo backend's ``pipeline`` in the pipelined row's gateway.
PIPELINE: Final = 32


async def _drive(url: str, calls: int, expected: object) -> float:
    async with connect(url, compression=None, ping_interval=None, open_timeout=10) as ws:
        sent = received = 0
        answered = bytearray(calls)  # each id must come back exactly once
        started = time.perf_counter()
        async with asyncio.timeout(60 + calls / 100):
            while sent < min(WINDOW, calls):
                await ws.send(orjson.dumps({"id": sent, "payload": [5, 6]}).decode())
                sent += 1
            while received < calls:
                reply = orjson.loads(await ws.recv())
                ident = reply.get("id")
                if (
                    reply.get("result") != expected
                    or type(ident) is not int
                    or not 0 <= ident < sent
                    or answered[ident]
                ):
                    raise RuntimeError(f"{url} answered {reply!r}")
                answered[ident] = 1
                received += 1
                if sent < calls:
                    await ws.send(orjson.dumps({"id": sent, "payload": [5, 6]}).decode())
                    sent += 1
        return calls / (time.perf_counter() - started)


def calls_per_second(url: str, calls: int, expected: object) -> float:
    """Calls per second with :data:`WINDOW` in flight on one socket to ``url``.

    Raises:
        RuntimeError: a reply was not ``{"id": <int>, "result": expected}`` for
            an id sent and not yet answered.
        TimeoutError: the calls took longer than a generous bound.
    """
    return uvloop.run(_drive(url, calls, expected))


def ws_rows(gateway: Server, echo: Server, pipelined: Server | None = None) -> list[dict[str, Any]]:
    """Row 6: ``/ws`` against the echo server, and that of ``pipelined`` (``pipeline = 32``)."""
    sides = {"echo": (echo, echo.url, [5, 6]), "gateway": (gateway, _ws_url(gateway), 11)}
    if pipelined is not None:
        sides["pipelined"] = (pipelined, _ws_url(pipelined), 11)
    for _, url, expected in sides.values():
        calls_per_second(url, min(CALLS, 1_000), expected)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(RUNS):
        for name, (server, url, expected) in sides.items():
            runs[name].append(calls_per_second(url, CALLS, expected))
            server.check_alive()
    rows = [
        comparison(
            f"WebSocket /ws vs plain websockets echo (1 socket, {WINDOW} in flight)",
            runs["gateway"],
            runs["echo"],
            0.7,
            unit="calls/s",
        )
    ]
    if pipelined is not None:
        rows.append(
            comparison(
                f"WebSocket /ws, backend pipeline = {PIPELINE}, vs plain websockets echo",
                runs["pipelined"],
                runs["echo"],
                0.35,
                unit="calls/s",
            )
        )
    return rows


def _ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://", 1) + "/ws"
