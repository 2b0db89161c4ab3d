"""System calls per call of the gateway: ``python -m bench.syscalls [--calls N]``.

A measurement for bench/README.md, not a row: starts the demo backend and
the gateway as the bench does (:func:`bench.servers.gateway`), warms both
paths up, then, for each path, attaches ``strace -c -f`` to the gateway
process (every thread), makes a fixed number of calls and detaches:

* ``POST /compute`` ``{"payload": [5, 6]}`` from wrk, :data:`CONNECTIONS`
  connections, one thread, stopped after ``N`` answers (the divisor is the
  count wrk reports, which includes the few answers in flight at the stop);
* ``/ws``, ``N`` calls ``{"id": n, "payload": [5, 6]}`` with 64 in flight on
  one socket (:func:`bench.ws.calls_per_second`).

``--pipeline N`` sets the backend's ``pipeline`` (a gateway that has the
key). It prints a Markdown table of the system calls per call of each path (those
of at least 0.01 per call on either path, then the total), ready to paste.
strace slows every system call down a lot, so more requests queue between
two wake-ups of the event loop than without it: the counts are for this
load, and the figures that matter are before/after comparisons made the
same way. Needs ``strace`` (``apt-get install strace``) and permission to
trace a child (root, or ``ptrace_scope`` 0 or 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

__all__ = ["CONNECTIONS", "count_syscalls", "main", "parse_summary"]

#: wrk connections of the /compute runs (as in the throughput rows).
CONNECTIONS: Final = 32
#: Longest wait for strace to attach to every thread, and to write its summary.
STRACE_TIMEOUT: Final = 30.0
#: Rows of the table: system calls of at least this many per call on one path.
SHOWN: Final = 0.01


def parse_summary(text: str) -> dict[str, int]:
    """Calls per system call from ``strace -c``'s table (the ``total`` line left out).

    Raises:
        ValueError: no table in ``text``.
    """
    counts: dict[str, int] = {}
    seen_header = False
    for line in text.splitlines():
        fields = line.split()
        if fields[:2] == ["%", "time"]:
            seen_header = True
            continue
        if not seen_header or not fields or fields[0].startswith("-"):
            continue
        # "% time, seconds, usecs/call, calls, [errors], syscall"; the total
        # line has no usecs/call.
        if fields[-1] == "total":
            continue
        if len(fields) in (5, 6) and fields[3].isdigit():
            counts[fields[-1]] = counts.get(fields[-1], 0) + int(fields[3])
    if not seen_header:
        raise ValueError(f"no strace -c summary in:\n{text[-2000:]}")
    return counts


@contextlib.contextmanager
def _traced(pid: int, output: Path) -> Iterator[None]:
    """``strace -c -f`` attached to every thread of ``pid`` for the body of the ``with``."""
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeError("strace is missing: apt-get install -y strace")
    command = [strace, "-c", "-f", "-o", str(output), "-p", str(pid)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        # strace says "Process N attached" (with "with M threads" for a
        # process that has several) once it traces every thread.
        said = b""
        deadline = time.monotonic() + STRACE_TIMEOUT
        while b"attached" not in said:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
                raise RuntimeError(f"strace did not attach within {STRACE_TIMEOUT:g} s: {said!r}")
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"strace exited with status {proc.wait(STRACE_TIMEOUT)}")
            said += chunk
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # detach and write the summary
        try:
            proc.wait(STRACE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STRACE_TIMEOUT)


def count_syscalls(pid: int, output: Path, calls: Callable[[], int]) -> tuple[dict[str, int], int]:
    """System calls of ``pid`` while ``calls()`` runs; returns them and the count it returned."""
    with _traced(pid, output):
        made = calls()
    return parse_summary(output.read_text(encoding="utf-8")), made


def _table(per_call: dict[str, dict[str, float]]) -> str:
    paths = list(per_call)
    names = sorted(
        {name for counts in per_call.values() for name, n in counts.items() if n >= SHOWN},
        key=lambda name: -max(per_call[p].get(name, 0.0) for p in paths),
    )
    lines = [
        "| system call | " + " | ".join(f"`{p}` per call" for p in paths) + " |",
        "|---|" + "---:|" * len(paths),
    ]
    for name in names:
        cells = " | ".join(f"{per_call[p].get(name, 0.0):.2f}" for p in paths)
        lines.append(f"| `{name}` | {cells} |")
    other = " | ".join(
        f"{sum(n for k, n in per_call[p].items() if k not in names):.2f}" for p in paths
    )
    lines.append(f"| others | {other} |")
    total = " | ".join(f"**{sum(per_call[p].values()):.2f}**" for p in paths)
    lines.append(f"| **total** | {total} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both paths and print the table (and the raw counts with ``--raw``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000, help="calls per path (default 5000)")
    parser.add_argument("--raw", action="store_true", help="also print strace's raw counts")
    parser.add_argument(
        "--pipeline",
        type=int,
        metavar="N",
        help="set the demo backend's pipeline = N (default: the gateway's default)",
    )
    args = parser.parse_args(argv)
    if args.calls < 100:
        parser.error("--calls must be at least 100")

    from .http import run_wrk
    from .servers import demo_backend, find_wrk, gateway, workdir, write_config
    from .ws import calls_per_second

    wrk = find_wrk()
    per_call: dict[str, dict[str, float]] = {}
    with workdir() as directory, demo_backend() as backend:
        options = "" if args.pipeline is None else f"pipeline = {args.pipeline}\n"
        config = write_config(directory, backend, log_level="warning", options=options)
        body = directory / "compute.json"
        body.write_bytes(b'{"payload": [5, 6]}')
        with gateway(config, backend, directory) as server:
            url = server.url + "/compute"
            ws_url = server.url.replace("http://", "ws://", 1) + "/ws"

            def compute(count: int) -> int:
                bound = 60 + count / 100
                return run_wrk(
                    wrk, url, body, seconds=bound, connections=CONNECTIONS, threads=1, limit=count
                ).requests

            def ws(count: int) -> int:
                calls_per_second(ws_url, count, 11)
                return count

            paths: dict[str, Callable[[int], int]] = {"POST /compute": compute, "/ws": ws}
            for name, path in paths.items():
                path(min(args.calls, 2000))  # warm-up: the pool at its size, code paths hot
                print(f"tracing {name}: {args.calls} calls ...", file=sys.stderr, flush=True)
                output = directory / "strace.txt"

                def traced(path: Callable[[int], int] = path) -> int:
                    return path(args.calls)

                counts, made = count_syscalls(server.pid, output, traced)
                server.check_alive()
                if args.raw:
                    print(f"{name}: {made} calls\n{output.read_text(encoding='utf-8')}")
                per_call[name] = {k: n / made for k, n in counts.items()}
    print(_table(per_call))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
