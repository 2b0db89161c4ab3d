"""The manager row: method calls per second through the gateway against native proxies.

A ``BaseManager`` server (:mod:`bench.manager_server`, its own process)
shares ``Echo`` objects whose ``echo(x)`` returns ``x``. The gateway has it
as a manager backend ``jobs``; the bench creates one object through
``POST /backends/jobs/objects`` and wrk (32 connections) calls
``POST /backends/jobs/objects/{id}/echo`` with ``{"args": [11]}``, each call
going through one of the pool's switched connections (8 by default).

The baseline is what a Python program does without the gateway: the stdlib
proxy of an object of the same manager, called from :data:`THREADS`
threads, one connection each (a proxy opens a connection per thread), as
many as the gateway's pool holds. Both answers are checked before
measuring. Informational: the gateway adds HTTP and JSON to every call.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any, Final

import orjson

from .core import RUNS
from .http import CONNECTIONS, SECONDS, WARMUP_SECONDS, run_wrk
from .report import comparison
from .servers import AUTHKEY_ENV, HOST, Backend, Server, gateway, http_call, knob, manager_backend

__all__ = [
    "NATIVE_CALLS",
    "THREADS",
    "create_echo",
    "manager_rows",
    "native_calls_per_second",
    "write_manager_config",
]

#: Threads of the native side: one connection each, as many as the pool's default.
THREADS: Final = 8
NATIVE_CALLS: Final = int(knob("MANAGER_CALLS", 40_000, 4_000))
_BODY: Final = orjson.dumps({"args": [11]})


class _Client(BaseManager):
    pass


_Client.register("Echo")


def write_manager_config(directory: Path, backend: Backend, *, log_level: str) -> Path:
    """The gateway's configuration: the one manager backend ``jobs``, defaults otherwise."""
    path = directory / "manager-gateway.toml"
    path.write_text(
        f"""\
[gateway]
host = "{HOST}"
shutdown_grace = 1.0
log_level = "{log_level}"

[backends.jobs]
kind = "manager"
address = "{backend.address}"
authkey_env = "{AUTHKEY_ENV}"
typeids = ["Echo"]
""",
        encoding="utf-8",
    )
    return path


def native_calls_per_second(backend: Backend, calls: int = NATIVE_CALLS) -> float:
    """``echo(11)`` calls per second of one stdlib proxy from :data:`THREADS` threads.

    Raises:
        RuntimeError: a call answered something other than 11.
    """
    manager = _Client(address=backend.stdlib_address, authkey=backend.authkey.encode())
    manager.connect()
    proxy: Any = manager.Echo()  # type: ignore[attr-defined]
    each = max(1, calls // THREADS)
    failures: list[object] = []
    start = threading.Barrier(THREADS + 1)

    def worker() -> None:
        proxy.echo(11)  # this thread's connection, opened before the clock starts
        start.wait()
        for _ in range(each):
            answer = proxy.echo(11)
            if answer != 11:
                failures.append(answer)
                return

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"the native proxy answered {failures[0]!r}")
    return each * THREADS / elapsed


def create_echo(server: Server) -> str:
    """Create an ``Echo`` through the gateway, check one call; the path of its ``echo``."""
    status, reply = http_call(server.url, "POST", "/backends/jobs/objects", b'{"typeid": "Echo"}')
    if status != 201:
        raise RuntimeError(f"creating an Echo through the gateway answered {status}: {reply!r}")
    ident: str = orjson.loads(reply)["id"]
    path = f"/backends/jobs/objects/{ident}/echo"
    status, reply = http_call(server.url, "POST", path, _BODY)
    if status != 200 or orjson.loads(reply).get("result") != 11:
        raise RuntimeError(f"POST {path} answered {status}: {reply[:300]!r}")
    return path


def manager_rows(wrk: str, directory: Path, *, log_level: str) -> list[dict[str, Any]]:
    """The manager row: the gateway's object calls against native proxies."""
    with manager_backend(directory) as backend:
        config = write_manager_config(directory, backend, log_level=log_level)
        with gateway(config, backend, directory) as server:
            path = create_echo(server)
            body = directory / "echo.json"
            body.write_bytes(_BODY)
            run_wrk(wrk, server.url + path, body, seconds=WARMUP_SECONDS)
            native_calls_per_second(backend, min(NATIVE_CALLS, 2_000))  # warm-up
            ours: list[float] = []
            native: list[float] = []
            for _ in range(RUNS):
                ours.append(run_wrk(wrk, server.url + path, body, seconds=SECONDS).rate)
                server.check_alive()
                native.append(native_calls_per_second(backend))
    return [
        comparison(
            f"manager method calls: gateway (wrk {CONNECTIONS} connections) "
            f"vs native proxy ({THREADS} threads, 1 connection each)",
            ours,
            native,
            None,
            unit="calls/s",
        )
    ]
