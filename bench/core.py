"""Rows for the protocol core and the pool, against the stdlib on the same backend.

1. Round trips per second on one connection: our asyncio client against the
   stdlib ``Client`` (target: at least 1.0x), with the client and the backend
   pinned to the same CPU, then to different CPUs.
2. Calls per second with 64 concurrent callers on a threaded backend: our
   pool against the stdlib ``Client`` used from 64 threads sharing the same
   number of connections (target: at least 2x).

Why pin: on a small virtual machine a wake-up on another CPU costs far more
than the protocol work of a round trip (here about 70 us against 20 us), so
an unpinned figure mostly measures where the scheduler happened to put the
two processes, and it put a blocking client and an event loop in different
places. Pinning gives both clients the same placement; the bench README
has the figures.

Each figure is the median of three runs; the ratio is of the medians.
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Client
from typing import Any

import uvloop

from connbridge.connection import connect
from connbridge.demo import spawn_demo_backend
from connbridge.pool import Pool, PoolSettings

from .report import comparison

RUNS = 3
ROUND_TRIPS = int(os.environ.get("BENCH_ROUND_TRIPS", "5000"))
POOL_CALLS = int(os.environ.get("BENCH_POOL_CALLS", "20000"))
CALLERS = 64
CONNECTIONS = 8


def _stdlib_address(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def stdlib_round_trips(address: str, key: bytes) -> float:
    conn = Client(_stdlib_address(address), authkey=key)
    try:
        started = time.perf_counter()
        for i in range(ROUND_TRIPS):
            conn.send((i, 1))
            if conn.recv() != i + 1:
                raise AssertionError("wrong reply")
        return ROUND_TRIPS / (time.perf_counter() - started)
    finally:
        conn.close()


def ours_round_trips(address: str, key: bytes) -> float:
    async def run() -> float:
        async with await connect(address, authkey=key) as conn:
            started = time.perf_counter()
            for i in range(ROUND_TRIPS):
                await conn.send((i, 1))
                if await conn.recv() != i + 1:
                    raise AssertionError("wrong reply")
            return ROUND_TRIPS / (time.perf_counter() - started)

    return uvloop.run(run())


def stdlib_threads(address: str, key: bytes) -> float:
    connections: queue.Queue[Any] = queue.Queue()
    for _ in range(CONNECTIONS):
        connections.put(Client(_stdlib_address(address), authkey=key))
    per_thread = POOL_CALLS // CALLERS

    def worker() -> None:
        for i in range(per_thread):
            conn = connections.get()
            try:
                conn.send((i, 1))
                if conn.recv() != i + 1:
                    raise AssertionError("wrong reply")
            finally:
                connections.put(conn)

    threads = [threading.Thread(target=worker) for _ in range(CALLERS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    while not connections.empty():
        connections.get().close()
    return per_thread * CALLERS / elapsed


def ours_pool(address: str, key: bytes) -> float:
    async def run() -> float:
        pool = Pool(address, authkey=key, settings=PoolSettings(max_connections=CONNECTIONS))
        await pool.start()
        per_caller = POOL_CALLS // CALLERS

        async def caller() -> None:
            for i in range(per_caller):
                if await pool.call((i, 1)) != i + 1:
                    raise AssertionError("wrong reply")

        try:
            # warm the pool to its full size so both sides use the same connections
            await asyncio.gather(*(caller() for _ in range(CALLERS)))
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(CALLERS)))
            return per_caller * CALLERS / (time.perf_counter() - started)
        finally:
            await pool.close()

    return uvloop.run(run())


def row(
    name: str,
    ours: Callable[[], float],
    theirs: Callable[[], float],
    target: float,
    *,
    unit: str = "calls/s",
) -> dict[str, Any]:
    """Measure both sides ``RUNS`` times, interleaved, and compare the medians.

    Interleaving makes drift on a noisy machine hit both sides alike.
    """
    ours_runs, theirs_runs = [], []
    for _ in range(RUNS):
        theirs_runs.append(theirs())
        ours_runs.append(ours())
    return comparison(name, ours_runs, theirs_runs, target, unit=unit)


def _pin_process(pid: int, cpus: set[int]) -> None:
    # Every thread, for sched_setaffinity acts on one thread; threads started
    # later inherit the mask of the thread that starts them.
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


@contextmanager
def placement(backend_pid: int, client_cpu: int, backend_cpu: int) -> Iterator[None]:
    """Pin this process and the backend to the given CPUs for one row."""
    own, theirs = os.sched_getaffinity(0), os.sched_getaffinity(backend_pid)
    _pin_process(os.getpid(), {client_cpu})
    _pin_process(backend_pid, {backend_cpu})
    try:
        yield
    finally:
        _pin_process(os.getpid(), own)
        _pin_process(backend_pid, theirs)


def core_rows() -> list[dict[str, Any]]:
    """The protocol core and pool rows, against the stdlib on one demo backend."""
    key = secrets.token_hex(16).encode()  # keys travel in env vars: no NUL bytes
    rows = []
    with spawn_demo_backend("127.0.0.1:0", key) as backend:
        cpus = sorted(os.sched_getaffinity(0))
        placements = [("same CPU", cpus[0], cpus[0])]
        if len(cpus) > 1:
            placements.append(("separate CPUs", cpus[1], cpus[0]))
        else:
            print("one CPU only: the separate-CPU round-trip row is left out")
        for label, client_cpu, backend_cpu in placements:
            with placement(backend.pid, client_cpu, backend_cpu):
                rows.append(
                    row(
                        f"client round trips, 1 connection, {label} (vs stdlib Client)",
                        lambda: ours_round_trips(backend.address, key),
                        lambda: stdlib_round_trips(backend.address, key),
                        1.0,
                    )
                )
        rows.append(
            row(
                f"pool, {CALLERS} callers / {CONNECTIONS} connections "
                "(vs stdlib Client in threads)",
                lambda: ours_pool(backend.address, key),
                lambda: stdlib_threads(backend.address, key),
                2.0,
            )
        )
    return rows
