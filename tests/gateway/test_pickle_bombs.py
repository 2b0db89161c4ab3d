"""A backend that answers with pickle bombs, against the real gateway process.

The gateway runs as ``python -m gateway`` with two backends: ``hostile``
(``pickle_bomb_backend.py``, which answers ``{"bomb": NAME}`` with that
bomb) and ``healthy`` (the demo backend). Every bomb is asked for in turn,
then the attacks of issue 12 all at once (three times), while a prober calls ``/healthz``
and the healthy backend without pause. Each bomb must come back as a 502
``refused-pickle`` problem; no probe may take 100 ms or more; the gateway's
peak RSS stays under 200 MiB; and SIGTERM ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import key_file, problem_type

HERE = Path(__file__).resolve().parent
BOMB_BACKEND = str(HERE / "pickle_bomb_backend.py")
sys.path.insert(0, str(HERE.parent / "connbridge"))

from pickle_bombs import GATEWAY_BOMBS as BOMBS  # noqa: E402

pytestmark = pytest.mark.timeout(240)

LISTENING = re.compile(r"connbridge gateway listening on http://127\.0\.0\.1:(\d+)")

#: The attacks named in issue 12: (a) to (d).
ISSUE_ATTACKS = [
    "deep-tuples-in-a-set",
    "shared-tuples-in-a-set",
    "shared-tuples-as-a-dict-key",
    "list-copies",
    "ordered-dict-reconstructor",
]

#: Bounds the issue sets.
MAX_PROBE_SECONDS = 0.100
MAX_RSS_KIB = 200 * 1024


def write_config(tmp_path: Path, hostile: object, healthy: object) -> Path:
    lines = ["[gateway]", 'default_backend = "healthy"', "shutdown_grace = 5.0"]
    for name, backend in (("hostile", hostile), ("healthy", healthy)):
        lines += [
            f"[backends.{name}]",
            f'address = "{backend.address}"',  # type: ignore[attr-defined]
            f'authkey_file = "{key_file(tmp_path, backend.authkey, name)}"',  # type: ignore[attr-defined]
            "timeout = 30.0",
            "max_connections = 4",
        ]
    path = tmp_path / "connbridge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def gateway_process(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONNBRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "--port",
        "0",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    url = ""
    try:
        deadline = time.monotonic() + 30
        while not url:
            line = await asyncio.wait_for(proc.stderr.readline(), deadline - time.monotonic())
            if not line:
                raise AssertionError("the gateway exited:\n" + "\n".join(lines))
            lines.append(line.decode(errors="replace"))
            match = LISTENING.search(lines[-1])
            if match:
                url = f"http://127.0.0.1:{match[1]}"
        drain = asyncio.create_task(_drain(proc.stderr, lines))
        yield proc, url
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace"))


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match[1])


class Prober:
    """Calls /healthz and the healthy backend back to back, recording the slowest."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.slowest = 0.0
        self.count = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def run(self, max_probes: int = 100_000, max_seconds: float = 180.0) -> None:
        deadline = time.monotonic() + max_seconds
        while not self._stop.is_set() and self.count < max_probes:
            if time.monotonic() > deadline:
                self.failures.append("the prober ran out of time")
                return
            for method, path, body in (
                ("GET", "/healthz", None),
                ("POST", "/backends/healthy/compute", {"payload": [5, 6]}),
            ):
                started = time.monotonic()
                response = await self.client.request(method, path, json=body)
                elapsed = time.monotonic() - started
                self.slowest = max(self.slowest, elapsed)
                self.count += 1
                if response.status_code != 200:
                    self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                elif body is not None and response.json()["result"] != 11:
                    self.failures.append(f"{path}: {response.text[:200]}")
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


async def ask_for(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/backends/hostile/compute", json={"payload": {"bomb": name}})
    assert response.status_code == 502, (name, response.text[:300])
    body = response.json()
    assert body["type"] == problem_type("refused-pickle"), (name, body)
    assert body["backend"] == "hostile"


async def test_pickle_bombs_against_the_gateway_process(
    tmp_path: Path, start_backend: object
) -> None:
    hostile = start_backend(BOMB_BACKEND)  # type: ignore[operator]
    healthy = start_backend("demo")  # type: ignore[operator]
    config = write_config(tmp_path, hostile, healthy)
    async with gateway_process(config) as (proc, url):
        # The probes use their own connection pool, separate from the attack's.
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as attacker,
            httpx.AsyncClient(base_url=url, timeout=5) as probe_client,
        ):
            assert (await probe_client.get("/healthz")).status_code == 200
            prober = Prober(probe_client)
            probing = asyncio.create_task(prober.run())
            try:
                for name in sorted(BOMBS):  # each in turn
                    await ask_for(attacker, name)
                for _ in range(3):  # the issue's attacks, all at once
                    await asyncio.gather(*(ask_for(attacker, name) for name in ISSUE_ATTACKS))
            finally:
                prober.stop()
                await asyncio.wait_for(probing, 30)
            print(f"probes: {prober.count}, slowest {prober.slowest * 1000:.1f} ms")
            assert not prober.failures, prober.failures[:5]
            assert prober.count >= 20, prober.count
            assert prober.slowest < MAX_PROBE_SECONDS, (
                f"slowest probe {prober.slowest * 1000:.1f} ms of {prober.count}"
            )
            # The hostile backend still works for honest requests.
            response = await attacker.post("/backends/hostile/compute", json={"payload": [2, 3]})
            assert response.json()["result"] == 5
        assert peak_rss_kib(proc.pid) < MAX_RSS_KIB
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
