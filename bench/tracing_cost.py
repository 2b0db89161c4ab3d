"""What tracing costs per ``POST /compute``: off, extra absent, and on.

    .venv/bin/python -m bench.tracing_cost            # callgrind counts (needs valgrind)
    .venv/bin/python -m bench.tracing_cost --wall     # wall-clock, interleaved runs

Each mode runs in a child process that builds the app with
:func:`gateway.app.create_app`, starts its lifespan, and sends requests to
it in-process (httpx's ASGI transport, no sockets for the HTTP side) while
a demo backend in another process answers ``[5, 6]``:

* ``off``: the otel extra installed, no ``OTEL_*`` variable;
* ``absent``: the extra's modules made unimportable (opentelemetry-api stays:
  FastAPI imports it itself), tracing asked for by ``OTEL_TRACES_EXPORTER``;
* ``on``: tracing exporting to an OTLP/HTTP sink in the child (a thread
  that answers 200 and drops the body), spans batched as in production.

On a shared machine wall-clock figures drift; instruction counts do not
(much). Under callgrind each mode runs twice, with ``--small`` and
``--large`` requests, and the difference divided by the difference in
requests is the instructions per request: start-up and imports cancel out.
Only the gateway's process is counted (the backend is a child of it, not
traced: ``--trace-children=no``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import asyncio, json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode, count = sys.argv[1], int(sys.argv[2])
if mode == "absent":
    EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto")

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(EXTRA):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Absent())
if mode == "on":
    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"
elif mode == "absent":
    os.environ["OTEL_TRACES_EXPORTER"] = "otlp"

import logging
logging.disable(logging.WARNING)
import httpx
from connbridge.demo import spawn_demo_backend
from gateway.app import create_app
from gateway.settings import Settings


async def main():
    demo = spawn_demo_backend("127.0.0.1:0", b"k" * 32)
    try:
        backend = {"address": demo.address, "authkey": "k" * 32, "max_connections": 1}
        app = create_app(Settings(backends={"demo": backend}))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for _ in range(20):  # warm-up: connection open, caches filled
                    await client.post("/compute", json={"payload": [5, 6]})
                started = time.perf_counter()
                for _ in range(count):
                    answer = await client.post("/compute", json={"payload": [5, 6]})
                    assert answer.status_code == 200, answer.text
                elapsed = time.perf_counter() - started
        print(json.dumps({"mode": mode, "count": count, "seconds": elapsed}))
    finally:
        demo.close()


asyncio.run(main())
"""

MODES = ("off", "absent", "on")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CONNBRIDGE_"))}
    env["PYTHONHASHSEED"] = "0"
    return env


def _instructions(mode: str, count: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{mode}.{count}"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            _CHILD,
            mode,
            str(count),
        ],
        env=_env(),
        check=True,
        capture_output=True,
        timeout=1800,
    )
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary line in {out}")
    return int(match[1])


def _seconds(mode: str, count: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(count)],
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(json.loads(result.stdout.splitlines()[-1])["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__)
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of callgrind")
    parser.add_argument("--small", type=int, default=200, help="requests of the short run")
    parser.add_argument("--large", type=int, default=1200, help="requests of the long run")
    parser.add_argument("--runs", type=int, default=3, help="wall-clock runs per mode")
    args = parser.parse_args()
    if args.wall:
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in MODES:  # interleaved: drift hits every mode alike
                times[mode].append(_seconds(mode, args.large) / args.large * 1e6)
        print(f"wall-clock, {args.large} requests, median of {args.runs} interleaved runs:")
        for mode in MODES:
            runs = ", ".join(f"{t:.1f}" for t in times[mode])
            print(f"  {mode:7} {statistics.median(times[mode]):8.1f} µs/request  ({runs})")
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install -y valgrind (or use --wall)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    try:
        print(f"callgrind instructions per request ({args.large} - {args.small} requests):")
        for mode in MODES:
            small = _instructions(mode, args.small, workdir)
            large = _instructions(mode, args.large, workdir)
            per = (large - small) / (args.large - args.small)
            print(f"  {mode:7} {per:12,.0f}   (runs: {small:,} / {large:,})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
