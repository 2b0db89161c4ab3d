"""``make bench``: run every benchmark row, print one table, write bench/results.json and .png.

Environment (see bench/README.md for every size knob):

``BENCH_ROWS``
    Comma-separated groups to run, default all:
    ``core,http,latency,load,ws,stream,large,memory,manager,remote``.
``BENCH_QUICK=1``
    Small sizes everywhere, for a smoke run of a minute or so; any
    ``BENCH_<KNOB>`` still wins. The results are not worth committing.
``BENCH_LOG_LEVEL``
    The gateway's ``log_level`` (default ``warning``: no access log line per
    request, as for the naive bridge; ``info`` measures with it).
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

GROUPS = (
    "core",
    "http",
    "latency",
    "load",
    "ws",
    "stream",
    "large",
    "memory",
    "manager",
    "remote",
)
#: Sizes of the lead's core rows under BENCH_QUICK (they read their own variables).
_QUICK_CORE = {"BENCH_ROUND_TRIPS": "1000", "BENCH_POOL_CALLS": "4000"}


def _groups() -> list[str]:
    text = os.environ.get("BENCH_ROWS", "")
    chosen = [g.strip() for g in text.split(",") if g.strip()] or list(GROUPS)
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        raise SystemExit(f"BENCH_ROWS: unknown group(s) {unknown}; choose from {list(GROUPS)}")
    return chosen


def _versions(wrk_version: str | None) -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in (
        "uvicorn",
        "fastapi",
        "starlette",
        "websockets",
        "pydantic",
        "orjson",
        "uvloop",
        "httptools",
        "matplotlib",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    if wrk_version is not None:
        found["wrk"] = wrk_version
    return found


def _settings() -> dict[str, Any]:
    """Every BENCH_* variable of this run, so results.json says how it was sized."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")}


def main() -> int:
    started = time.monotonic()
    load_at_start = list(os.getloadavg())
    groups = _groups()
    if os.environ.get("BENCH_QUICK") == "1":
        for name, value in _QUICK_CORE.items():
            os.environ.setdefault(name, value)
    # Imported now: the row modules read their sizes from the environment at import.
    from .chart import write_chart
    from .core import RUNS, core_rows
    from .report import print_table, write_results
    from .servers import (
        demo_backend,
        echo_server,
        find_wrk,
        gateway,
        naive_bridge,
        workdir,
        write_config,
        wrk_version,
    )

    log_level = os.environ.get("BENCH_LOG_LEVEL", "warning")
    wrk = find_wrk() if set(groups) - {"core", "ws", "stream"} else None
    rows: list[dict[str, Any]] = []
    if "core" in groups:
        print("core rows ...", file=sys.stderr, flush=True)
        rows += core_rows()
    with workdir() as directory, demo_backend() as backend:
        config = write_config(directory, backend, log_level=log_level)
        if set(groups) & {"http", "latency", "load", "ws", "stream", "large"}:
            from .http import large_rows, latency_rows, throughput_rows
            from .load import load_rows
            from .stream import stream_rows
            from .ws import PIPELINE as WS_PIPELINE
            from .ws import ws_rows

            with gateway(config, backend, directory) as server:
                if "http" in groups:
                    print("http rows ...", file=sys.stderr, flush=True)
                    assert wrk is not None
                    with naive_bridge(backend, directory) as naive:
                        rows += throughput_rows(wrk, server, naive, backend, directory)
                if "latency" in groups:
                    print("latency rows ...", file=sys.stderr, flush=True)
                    assert wrk is not None
                    rows += latency_rows(wrk, server, backend, directory)
                if "load" in groups:
                    print("load curve rows ...", file=sys.stderr, flush=True)
                    assert wrk is not None
                    rows += load_rows(wrk, server, directory)
                if "ws" in groups:
                    print("websocket rows ...", file=sys.stderr, flush=True)
                    pipelined_config = write_config(
                        directory,
                        backend,
                        log_level=log_level,
                        name="gateway-pipelined",
                        options=f"pipeline = {WS_PIPELINE}\n",
                    )
                    with (
                        echo_server(directory) as echo,
                        gateway(
                            pipelined_config, backend, directory, name="gateway-pipelined"
                        ) as pipelined,
                    ):
                        rows += ws_rows(server, echo, pipelined)
                if "stream" in groups:
                    print("stream rows ...", file=sys.stderr, flush=True)
                    rows += stream_rows(server, backend)
                if "large" in groups:
                    # Last on this gateway: its buffers grow to the payload's size.
                    print("large payload rows ...", file=sys.stderr, flush=True)
                    assert wrk is not None
                    rows += large_rows(wrk, server, backend, directory)
        if "memory" in groups:
            from .memory import memory_rows

            print("memory rows ...", file=sys.stderr, flush=True)
            assert wrk is not None
            rows += memory_rows(wrk, config, backend, directory)
        if "manager" in groups:
            from .manager import manager_rows

            print("manager rows ...", file=sys.stderr, flush=True)
            assert wrk is not None
            rows += manager_rows(wrk, directory, log_level=log_level)
        if "remote" in groups:
            from .remote import remote_rows

            print("remote rows (through the latency relay) ...", file=sys.stderr, flush=True)
            assert wrk is not None
            rows += remote_rows(wrk, backend, directory)
    seconds = time.monotonic() - started
    print_table(rows)
    results = write_results(
        rows,
        RUNS,
        versions=_versions(wrk_version(wrk) if wrk is not None else None),
        settings=_settings(),
        seconds=seconds,
        load_at_start=load_at_start,
    )
    title = f"connbridge bench, {os.cpu_count()} CPUs, median of {RUNS} runs per side"
    chart = write_chart(rows, title)
    print(f"wrote {results} and {chart} in {seconds:.0f} s")
    return 0


raise SystemExit(main())
