"""/stream under load: many streams at once, and clients that read slowly.

* 100 concurrent streams of 1,000 replies each against a threaded backend
  (the demo: one thread per connection): every stream complete and in order.
* The gateway in a subprocess of its own, read by clients that pause and then
  read slowly: its resident memory (``VmRSS``) stays far below what the
  backend would have sent, because the gateway stops reading the backend
  while a client's socket is full.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import key_file, serve_gateway, wait_until
from stream_support import stream_op

pytestmark = pytest.mark.timeout(120)

LISTENING = re.compile(r"connbridge gateway listening on (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo", mode="threaded")


async def read_stream(client: httpx.AsyncClient, body: dict) -> list[dict]:
    async with client.stream("POST", "/backends/b/stream", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return [json.loads(line) async for line in response.aiter_lines()]


async def test_100_concurrent_streams_of_1000_replies(demo, tmp_path):
    table = {
        "address": demo.address,
        "authkey_file": key_file(tmp_path, demo.authkey),
        "max_connections": 100,
        "call_timeout": 100.0,
    }
    async with serve_gateway({"backends": {"b": table}}) as gw:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=gw.url, timeout=100, limits=limits) as client:
            started = time.monotonic()
            streams = await asyncio.gather(
                *(
                    read_stream(client, {"payload": stream_op(1000, value=n), "replies": 1000})
                    for n in range(100)
                )
            )
            elapsed = time.monotonic() - started
        for n, items in enumerate(streams):
            assert items[-1] == {"end": {"reason": "count"}}, (n, items[-1])
            assert items[:-1] == [{"result": {"seq": i, "value": n}} for i in range(1000)]
        pool = gw.state.backends["b"].running_pool()
        await wait_until(lambda: _idle(pool), what="every connection back")
        stats = pool.stats()
        assert stats["opened"] <= 100 and stats["closed"] == {}
        assert stats["calls"] == 100
    print(f"100 x 1000 replies in {elapsed:.1f} s ({100_000 / elapsed:,.0f} replies/s)")


async def _idle(pool) -> bool:
    return pool.stats()["in_use"] == 0


def vm_rss(pid: int) -> int:
    """Resident memory of a process, in bytes (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Gateway:
    """``python -m gateway --config FILE --port 0`` in a subprocess."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNBRIDGE_")}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config), "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.02)
        self.url = match.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


STREAMS = 10
REPLIES = 2000
VALUE = "z" * 10_000  # 20 MB per stream, 200 MB in all


async def slow_reader(client: httpx.AsyncClient, pause: asyncio.Event) -> int:
    """Read one stream: the first line, then nothing until ``pause`` is set, then slowly."""
    body = {"payload": stream_op(REPLIES, value=VALUE), "replies": REPLIES}
    seq = 0
    buffered = b""
    last = None
    async with client.stream("POST", "/backends/b/stream", json=body) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw(64 * 1024):
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                item = json.loads(line)
                if "result" in item:
                    assert item["result"]["seq"] == seq
                    seq += 1
                else:
                    last = item
            if not pause.is_set():
                await pause.wait()
            await asyncio.sleep(0.005)  # slowly: about 10 MB/s per client
    assert last == {"end": {"reason": "count"}}
    return seq


async def test_rss_stays_bounded_when_clients_read_slowly(demo, tmp_path):
    config = tmp_path / "gateway.toml"
    authkey = key_file(tmp_path, demo.authkey)
    config.write_text(
        "[backends.b]\n"
        f'address = "{demo.address}"\n'
        f'authkey_file = "{authkey}"\n'
        "max_connections = 20\n"
        "call_timeout = 100.0\n"
        "stream_idle_timeout = 60.0\n"
    )
    gateway = Gateway(config, tmp_path / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=100) as client:
            # Warm up: one whole stream at full speed, then the baseline.
            warm = asyncio.Event()
            warm.set()
            assert await slow_reader(client, warm) == REPLIES
            baseline = vm_rss(gateway.proc.pid)

            pause = asyncio.Event()
            readers = [asyncio.create_task(slow_reader(client, pause)) for _ in range(STREAMS)]
            samples = []
            for _ in range(20):  # 2 s in which no client reads: the backend could send it all
                await asyncio.sleep(0.1)
                samples.append(vm_rss(gateway.proc.pid))
            pause.set()
            while not all(task.done() for task in readers):
                await asyncio.sleep(0.1)
                samples.append(vm_rss(gateway.proc.pid))
            assert [task.result() for task in readers] == [REPLIES] * STREAMS
    finally:
        status = gateway.stop()
    assert status == 0, (tmp_path / "gateway.log").read_text()
    growth = max(samples) - baseline
    sent = STREAMS * REPLIES * len(VALUE)
    print(
        f"gateway RSS {baseline / 2**20:.0f} MiB, at most +{growth / 2**20:.1f} MiB "
        f"while {sent / 2**20:.0f} MiB went through {STREAMS} slow readers"
    )
    # What each stream may hold: the transport's buffer to the client, the read
    # buffer from the backend, and a reply or two in between: well under 5 MiB.
    assert growth < STREAMS * 5 * 2**20, (baseline, samples)
