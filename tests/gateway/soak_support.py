"""Helpers of the gateway's hostile-backend and fragile-server tests (issue 12).

Each of those tests runs in two lengths: a short one in ``make test`` (a few
seconds) and the full one of the issue in ``make soak``, which sets
``CONNBRIDGE_SOAK=1``. :func:`duration` picks the length; nothing is skipped.

:func:`cli_gateway` starts the real gateway as a process (the
``connbridge-gateway --config FILE`` command line, JSON logs), so that
kill -9 and SIGTERM are real, and gives a client bound to it plus the
gateway's parsed log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from gateway_support import backend_config
from process_support import GatewayProcess, gateway_process

#: True under ``make soak``: the tests run for the durations of issue 12.
SOAK = os.environ.get("CONNBRIDGE_SOAK") == "1"


def duration(short: float, full: float) -> float:
    """Seconds a load loop runs: ``full`` under ``make soak``, ``short`` otherwise."""
    return full if SOAK else short


def _toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and arrays of them are TOML as well.
    return json.dumps(value)


def write_config(
    directory: Path, backends: Mapping[str, Mapping[str, Any]], **gateway: object
) -> Path:
    """A TOML file with ``[gateway]`` keys and one ``[backends.NAME]`` table per backend."""
    lines = ["[gateway]", 'log_format = "json"']
    lines += [f"{key} = {_toml_value(value)}" for key, value in gateway.items()]
    for name, table in backends.items():
        lines.append(f"[backends.{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path = directory / f"connbridge-{len(list(directory.glob('connbridge-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class CliGateway:
    """A running gateway process, a client bound to it, and its log."""

    process: GatewayProcess
    client: httpx.AsyncClient
    url: str

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def records(self) -> list[dict[str, Any]]:
        """The gateway's JSON log records so far."""
        out = []
        for line in self.process.lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def warnings(self, text: str) -> list[dict[str, Any]]:
        """Log records of level warning or worse whose message contains ``text``."""
        return [
            r
            for r in self.records()
            if r.get("level") in ("warning", "error", "critical") and text in r["message"]
        ]

    async def stats(self, name: str) -> dict[str, Any]:
        """The pool statistics of backend ``name``, from ``GET /backends``."""
        listing = (await self.client.get("/backends")).json()["backends"]
        for backend in listing:
            if backend["name"] == name:
                stats: dict[str, Any] = backend["stats"]
                return stats
        raise AssertionError(f"no backend {name!r} in {listing}")

    async def wait_stats(
        self, name: str, condition: Any, timeout: float = 15.0, what: str = "condition"
    ) -> dict[str, Any]:
        """Poll the statistics of ``name`` until ``condition(stats)`` holds; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.stats(name)
            if condition(stats):
                return stats
            if loop.time() > deadline:
                raise AssertionError(f"{what} did not hold within {timeout} s: {stats}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the gateway gets no chance to close anything."""
        self.process.proc.kill()

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit status."""
        self.process.proc.send_signal(signal.SIGTERM)
        return await self.process.wait(timeout)

    def output(self) -> str:
        return self.process.output()


@contextlib.asynccontextmanager
async def cli_gateway(
    directory: Path,
    backends: Mapping[str, Mapping[str, Any]],
    *,
    connections: int = 100,
    **gateway: object,
) -> AsyncIterator[CliGateway]:
    """Run ``connbridge-gateway --config FILE --port 0`` until the block ends.

    ``connections`` bounds the client's HTTP connections. The process is
    killed at the end if it is still running; a block that succeeds also
    fails if the gateway logged a traceback.
    """
    path = write_config(directory, backends, **gateway)
    async with gateway_process("--config", str(path), "--port", "0") as process:
        url = await process.listening()
        # Idle HTTP connections are dropped before uvicorn's 5 s keep-alive
        # timeout, so that no request goes out on one the server is closing.
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2
        )
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            yield CliGateway(process, client, url)
    # Reached only when the block succeeded: whatever happened, nothing crashed.
    assert "Traceback" not in process.output(), process.output()


def table(backend: Any, directory: Path, **extra: Any) -> dict[str, Any]:
    """The ``[backends.NAME]`` table of a ``start_backend`` process (key in a file)."""
    return backend_config(backend, directory, **extra)


def log_time(record: Mapping[str, Any]) -> float:
    """A JSON log record's ``time`` as a Unix timestamp (millisecond precision)."""
    stamp = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    return stamp.timestamp()


def slug(response: httpx.Response) -> str:
    """The problem ``type`` slug of an error response ('' for a success)."""
    if response.status_code < 400:
        return ""
    kind: str = response.json().get("type", "")
    return kind.rsplit("/", 1)[-1]
