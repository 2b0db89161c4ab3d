"""Helpers of the tests that run the gateway's command line as a real process.

:func:`gateway_process` starts ``python -m gateway`` (optionally under
``prlimit``, for a descriptor limit), reads its log lines and finds the port
it listens on; :func:`write_config` writes a TOML file for one backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from gateway_support import key_file

LISTENING = re.compile(
    r"connbridge gateway listening on (https?)://(?:127\.0\.0\.1|0\.0\.0\.0):(\d+)"
)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONNBRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or child_env(),
        check=False,
    )


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            match = LISTENING.search(text)
            if match and not self.url:
                self.url = f"{match[1]}://127.0.0.1:{match[2]}"
                self._listening.set()

    async def listening(self, timeout: float = 30) -> str:
        waiter = asyncio.create_task(self._listening.wait())
        done, _ = await asyncio.wait(
            {waiter, self._reader}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if waiter not in done:
            waiter.cancel()
            raise AssertionError("the gateway did not listen:\n" + self.output())
        return self.url

    async def wait(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)


#: The console script that ``make demo`` runs (installed next to the interpreter).
CONSOLE_SCRIPT = Path(sys.executable).parent / "connbridge-gateway"


@contextlib.asynccontextmanager
async def gateway_process(
    *args: str,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    nofile: tuple[int, int] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """The gateway as a process; ``nofile``: its ``(soft, hard)`` descriptor limits."""
    limit = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--"] if nofile else []
    proc = await asyncio.create_subprocess_exec(
        *limit,
        *(command or [sys.executable, "-m", "gateway"]),
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env or child_env(),
    )
    running = GatewayProcess(proc)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
        await running.wait()


def write_config(
    tmp_path: Path,
    backend,
    *,
    tables: dict[str, dict[str, object]] | None = None,
    backend_keys: dict[str, object] | None = None,
    extra: str = "",
    **gateway: object,
) -> Path:
    """A configuration with the one backend ``adder``.

    ``tables``: more tables by name; ``backend_keys``: more keys of ``adder``;
    ``extra``: TOML text added at the end.
    """
    lines = ["[gateway]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in gateway.items()]
    for name, table in (tables or {}).items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    lines += [
        "[backends.adder]",
        f'address = "{backend.address}"',
        f'authkey_file = "{key_file(tmp_path, backend.authkey)}"',
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in (backend_keys or {}).items()]
    lines.append(extra)
    path = tmp_path / "connbridge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
