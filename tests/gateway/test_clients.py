"""Hostile clients against the gateway process, over real sockets (issue 13).

Each test starts ``python -m gateway`` (the command line, with the gateway's
own server protocols) against a real demo backend and measures the process
from /proc: its resident memory and its descriptors. The floods run for
``DURATION`` seconds: a few in ``make test``; ``make soak-clients`` sets
``CONNBRIDGE_SOAK_CLIENTS=1`` for the long versions (60 s floods, 20,000
WebSocket attempts, a minute of slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from gateway_support import PROBLEM, key_file, problem_type, sha256_hex, wait_until
from process_support import GatewayProcess, gateway_process, write_config
from ws_support import open_ws, recv_json, until_closed

from gateway.settings import GatewaySettings

SOAK = os.environ.get("CONNBRIDGE_SOAK_CLIENTS") == "1"
#: How long each flood lasts.
DURATION = 60.0 if SOAK else 5.0
#: WebSocket attempts of the idle-socket test, and the cap it runs under.
ATTEMPTS, SOCKET_CAP = (20_000, 1000) if SOAK else (2_000, 300)
#: The most resident memory the gateway may use under any of these floods.
RSS_BOUND = 150 * 1024 * 1024
KEY = "clients-test-key-0001"

pytestmark = pytest.mark.timeout(300 if SOAK else 120)


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, demo: Any, *, nofile=None, tables=None, keyed: bool = False, **gateway: object
):
    """The gateway process for ``demo`` (as backend ``adder``, 64 connections)."""
    extra = f'[[auth.keys]]\nname = "ci"\nsha256 = "{sha256_hex(KEY)}"\n' if keyed else ""
    path = write_config(
        tmp_path,
        demo,
        tables=tables,
        backend_keys={"max_connections": 64},
        extra=extra,
        **gateway,
    )
    async with gateway_process("--config", str(path), "--port", "0", nofile=nofile) as gw:
        await gw.listening()
        yield gw


def handshake(path: str = "/ws", key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the zero mask: the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


class Flooder:
    """A client that completes the WebSocket handshake, then only sends, never reads."""

    def __init__(self, port: int, key: str | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # A small receive buffer: what the gateway writes stays on its side.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.sendall(handshake(key=key))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "the gateway closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.sock.setblocking(False)

    def flood(self, data: bytes, until: float) -> bool:
        """Send ``data`` over and over until ``until`` (monotonic); True when dropped."""
        import select

        while time.monotonic() < until:
            _, writable, _ = select.select([], [self.sock], [], 0.2)
            if not writable:
                continue
            try:
                self.sock.send(data)
            except BlockingIOError:
                continue
            except OSError:  # reset or broken pipe: the gateway dropped us
                return True
        return False

    def close(self) -> None:
        self.sock.close()


async def flood_for(gw: GatewayProcess, data: bytes, key: str | None) -> tuple[int, int]:
    """Flood the gateway with ``data`` for ``DURATION`` s, reconnecting after each drop.

    Returns the number of drops and the largest RSS seen (sampled every 0.2 s).
    """
    pid = gw.proc.pid
    port = port_of(gw.url)
    end = time.monotonic() + DURATION
    drops = 0
    peak = rss(pid)
    while time.monotonic() < end:
        flooder = await asyncio.to_thread(Flooder, port, key)
        try:
            while time.monotonic() < end:
                step = min(time.monotonic() + 0.2, end)
                if await asyncio.to_thread(flooder.flood, data, step):
                    drops += 1
                    break
                peak = max(peak, rss(pid))
        finally:
            flooder.close()
        peak = max(peak, rss(pid))
    return drops, peak


async def healthy(gw: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200


# -- memory per client ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY], ids=["no-key", "key"])
async def test_ping_flood_is_bounded_and_dropped(tmp_path, demo, key):
    # Pings of 125 bytes, each asking for a pong that the client never reads.
    # Without a key the socket is refused (1008) and the gateway stops
    # answering; with one it stops reading, then drops the client.
    tables = {"websocket": {"send_timeout": 1.0, "close_timeout": 1.0}}
    async with running(tmp_path, demo, tables=tables, keyed=True) as gw:
        drops, peak = await flood_for(gw, frame(0x9, b"p" * 125) * 64, key)
        await healthy(gw)
    assert drops >= 1, "the flooding socket was never dropped"
    assert peak < RSS_BOUND, f"RSS peaked at {peak / 2**20:.0f} MiB"
    print(
        f"ping flood ({'key' if key else 'no key'}): {drops} drops, RSS peak {peak / 2**20:.0f} MiB"
    )


async def test_call_flood_that_never_reads_is_bounded_and_dropped(tmp_path, demo):
    call = orjson.dumps({"id": 1, "payload": {"op": "echo", "value": "x" * 4000}})
    tables = {"websocket": {"send_timeout": 1.0, "close_timeout": 1.0}}
    async with running(tmp_path, demo, tables=tables) as gw:
        drops, peak = await flood_for(gw, frame(0x1, call) * 16, None)
        await healthy(gw)
    assert drops >= 1, "the flooding socket was never dropped"
    assert peak < RSS_BOUND, f"RSS peaked at {peak / 2**20:.0f} MiB"
    print(f"call flood: {drops} drops, RSS peak {peak / 2**20:.0f} MiB")


async def ws_attempt(port: int) -> tuple[int, asyncio.StreamWriter | None, bytes]:
    """One WebSocket handshake: its status; the writer of a 101 (kept open), and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    status = int(head.split(b" ", 2)[1])
    if status == 101:
        return status, writer, b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 20)
    writer.close()
    return status, None, body


async def test_idle_websockets_are_capped(tmp_path, demo):
    tables = {"websocket": {"max_sockets": SOCKET_CAP}}
    async with running(tmp_path, demo, tables=tables) as gw:
        pid, port = gw.proc.pid, port_of(gw.url)
        base = rss(pid)
        held: list[asyncio.StreamWriter] = []
        statuses: dict[int, int] = {}
        refusal = b""
        peak = base
        try:
            for start in range(0, ATTEMPTS, 200):
                batch = await asyncio.gather(
                    *(ws_attempt(port) for _ in range(min(200, ATTEMPTS - start)))
                )
                for status, writer, body in batch:
                    statuses[status] = statuses.get(status, 0) + 1
                    if writer is not None:
                        held.append(writer)
                    elif body:
                        refusal = body
                peak = max(peak, rss(pid))
                # Another client is served while the cap is held.
                await healthy(gw)
            assert statuses.get(101) == SOCKET_CAP, statuses
            assert statuses.get(503) == ATTEMPTS - SOCKET_CAP, statuses
            problem = json.loads(refusal)
            assert problem["type"] == problem_type("too-many-connections")
            assert problem["status"] == 503
            # An open socket still works, and so does an HTTP client.
            await healthy(gw)
        finally:
            for writer in held:
                writer.close()
    assert peak < RSS_BOUND, f"RSS peaked at {peak / 2**20:.0f} MiB"
    print(
        f"{ATTEMPTS} WebSocket attempts: {statuses}; RSS {base / 2**20:.0f} MiB at start, "
        f"peak {peak / 2**20:.0f} MiB"
    )


# -- descriptors, slow headers and bodies ---------------------------------------------------


async def test_slowloris_under_a_small_descriptor_limit(tmp_path, demo):
    # 2,000 sockets dribbling headers at a gateway allowed 1,024 descriptors
    # (soft and hard, so that raising the soft limit cannot help); the
    # attacker reconnects each socket the gateway closes. Probes from new
    # clients, one every 0.5 s while the attack goes on, must all succeed.
    sockets_wanted = 2000
    probes_wanted = 60 if SOAK else 8
    async with running(tmp_path, demo, nofile=(1024, 1024)) as gw:
        port = port_of(gw.url)
        assert "soft limit 1024 (was 1024)" in gw.output(), gw.output()
        # The attacker has a process of its own: in this one, its 2,000
        # coroutines would delay the probes' own writes.
        seconds = DURATION + 6
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("slowloris.py")),
            str(port),
            str(sockets_wanted),
            str(seconds),
            stdout=subprocess.PIPE,
        )
        probes = 0
        failures: list[str] = []
        slowest = 0.0
        deadline = time.monotonic() + seconds - 3
        try:
            await asyncio.sleep(2.0)  # let the sockets pile up
            peak_fds = descriptors(gw.proc.pid)
            while probes < probes_wanted and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
                        response = await client.get("/healthz")
                    ok = response.status_code == 200
                    why = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                probes += 1
                if not ok:
                    failures.append(f"{time.monotonic() - started:.2f} s: {why}")
                slowest = max(slowest, time.monotonic() - started)
                peak_fds = max(peak_fds, descriptors(gw.proc.pid))
                await asyncio.sleep(0.5)
            out, _ = await asyncio.wait_for(attacker.communicate(), seconds + 30)
            reconnects = int(out)
        finally:
            if attacker.returncode is None:
                attacker.kill()
                await attacker.wait()
    errors = [line for line in gw.lines if "rror" in line or "Errno" in line][:5]
    assert probes == probes_wanted, (probes, failures)
    assert not failures, f"{len(failures)} of {probes} probes failed: {failures} {errors}"
    assert reconnects > 0, "the gateway closed none of the slow sockets"
    assert peak_fds < 1024
    print(
        f"slowloris: {probes} probes, slowest {slowest:.2f} s; {reconnects} reconnects; "
        f"gateway descriptors peaked at {peak_fds}"
    )


async def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data``, then read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def split_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    return int(lines[0].split(" ")[1]), headers, json.loads(body) if body else None


async def test_stalled_headers_and_bodies_get_408(tmp_path, demo):
    async with running(tmp_path, demo, header_timeout=1.0, body_timeout=1.0) as gw:
        port = port_of(gw.url)
        started = time.monotonic()
        raw = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half")
        status, headers, problem = split_response(raw)
        assert (status, headers["content-type"]) == (408, PROBLEM)
        assert problem["type"] == problem_type("request-timeout")
        assert "headers" in problem["detail"]
        assert 0.9 < time.monotonic() - started < 5
        # A connection that sends nothing at all is closed the same way.
        status, _, problem = split_response(await raw_exchange(port, b""))
        assert status == 408


# Every route that reads a JSON body: each must bound a stalled one.
BODY_ROUTES = [
    "/compute",
    "/backends/adder/compute",
    "/compute/batch",
    "/stream",
    "/backends/adder/stream",
    "/backends/jobs/objects",
    "/backends/jobs/objects/0123456789abcdef/get",
]


async def test_every_route_that_reads_a_body_refuses_a_stalled_one(tmp_path, demo, start_backend):
    manager = start_backend(str(Path(__file__).parents[1] / "servers" / "manager.py"))
    jobs = {
        "address": manager.address,
        "authkey_file": str(key_file(tmp_path, manager.authkey)),
        "kind": "manager",
        "typeids": ["*"],
    }
    async with running(tmp_path, demo, body_timeout=1.0, tables={"backends.jobs": jobs}) as gw:
        port = port_of(gw.url)
        for path in BODY_ROUTES:
            # Content-Length: 100, and 17 bytes sent.
            body = b'{"payload": [1, 2'
            request = (
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n" % path.encode() + body
            )
            started = time.monotonic()
            status, headers, problem = split_response(await raw_exchange(port, request))
            assert (status, headers["content-type"]) == (408, PROBLEM), (path, problem)
            assert problem["type"] == problem_type("request-timeout")
            assert problem["detail"].endswith(f"after {len(body)} bytes")
            assert headers["connection"] == "close"
            assert 0.9 < time.monotonic() - started < 5, path


async def test_a_slow_body_whose_pieces_come_in_time_is_read(tmp_path, demo):
    # body_timeout bounds the wait for each piece, not the whole body: pieces
    # 0.5 s apart take longer than the timeout in all and are all read.
    async with running(tmp_path, demo, body_timeout=3.0) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw.url))
        try:
            body = b'{"payload": [5, 6], "backend": "adder"}'
            pieces = [body[i : i + 5] for i in range(0, len(body), 5)]  # 8 pieces, 4 s
            writer.write(
                b"POST /compute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            started = time.monotonic()
            for piece in pieces:
                await asyncio.sleep(0.5)
                writer.write(piece)
                await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert time.monotonic() - started > 3.0
        status, _, answer = split_response(raw)
        assert (status, answer["result"]) == (200, 11)


async def test_oversized_headers_get_431(tmp_path, demo):
    async with running(tmp_path, demo, max_header_bytes=4096) as gw:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n"
        status, headers, problem = split_response(await raw_exchange(port_of(gw.url), request))
        assert (status, headers["content-type"]) == (431, PROBLEM)
        assert problem["type"] == problem_type("headers-too-large")
        await healthy(gw)


async def test_a_connection_over_the_cap_gets_503_when_none_can_be_closed(tmp_path, demo):
    async with running(tmp_path, demo, max_client_connections=3) as gw:
        port = port_of(gw.url)
        assert "at most 3 client connections" in gw.output()
        async with contextlib.AsyncExitStack() as stack:
            # Three WebSockets: busy connections, which are never closed for room.
            for _ in range(3):
                ws = await stack.enter_async_context(open_ws(port))
                await ws.send('{"id": 1, "payload": [1, 2]}')
                assert await recv_json(ws) == {"id": 1, "result": 3}
            status, headers, problem = split_response(
                await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            )
            assert (status, headers["content-type"]) == (503, PROBLEM)
            assert problem["type"] == problem_type("too-many-connections")
            assert headers["retry-after"] == "1"
        # The sockets are closed: there is room again.

        async def served() -> bool:
            try:
                await healthy(gw)
            except (AssertionError, httpx.HTTPError):
                return False
            return True

        await wait_until(served, what="a new connection to be served")


async def test_idle_keepalive_connections_make_room(tmp_path, demo):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with running(tmp_path, demo, max_client_connections=2) as gw:
        port = port_of(gw.url)
        idle = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            idle.append((reader, writer))
        try:
            # Both connections are idle, kept alive: a third client is served,
            # and the connection that waited longest is the one closed.
            await healthy(gw)
            oldest = idle[0][0]
            rest = await asyncio.wait_for(oldest.read(), 10)
            assert b"HTTP/1.1" not in rest  # EOF, after the first response's body
            assert not idle[1][0].at_eof()
        finally:
            for _, writer in idle:
                writer.close()


async def test_an_idle_connection_outlives_the_clients_pool_then_closes(tmp_path, demo):
    # The default is longer than httpx's own pool keeps a connection idle: were
    # both equal (uvicorn's 5 s and httpx's 5 s), a client could send on a
    # connection at the instant the gateway closes it (the CI failure of
    # test_many_concurrent_calls_and_creates: httpx.ReadError on a POST).
    assert GatewaySettings().keepalive_timeout > httpx.Limits().keepalive_expiry + 10
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with running(tmp_path, demo, keepalive_timeout=0.5) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw.url))
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            idle_since = time.monotonic()
            # The configured timeout reaches the server: the idle connection ends.
            rest = await asyncio.wait_for(reader.read(), 10)
            assert b"HTTP/1.1" not in rest and reader.at_eof()
            assert time.monotonic() - idle_since >= 0.4
        finally:
            writer.close()


async def test_descriptor_limit_is_raised_and_logged(tmp_path, demo):
    async with running(tmp_path, demo, nofile=(512, 4096)) as gw:
        limits = await asyncio.to_thread(Path(f"/proc/{gw.proc.pid}/limits").read_text)
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
        assert "soft limit 4096 (was 512)" in gw.output(), gw.output()


# -- lingering close ------------------------------------------------------------------------


def post_with_urllib(url: str, size: int) -> tuple[int, str, dict[str, Any]]:
    request = urllib.request.Request(
        url + "/compute",
        data=b"[" + b"1," * (size // 2 - 1) + b"1]",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.load(exc)


async def test_urllib_posting_8_mib_sees_the_413(tmp_path, demo):
    async with running(tmp_path, demo) as gw:
        for _ in range(5):
            status, media, problem = await asyncio.to_thread(
                post_with_urllib, gw.url, 8 * 1024 * 1024
            )
            assert (status, media) == (413, PROBLEM)
            assert problem["type"] == problem_type("body-too-large")
        await healthy(gw)


# -- the drain ------------------------------------------------------------------------------


async def test_sigterm_answers_the_websocket_calls_in_flight(tmp_path, demo):
    sockets, per_socket = 5, 10
    async with running(tmp_path, demo, shutdown_grace=10) as gw:
        port = port_of(gw.url)
        async with contextlib.AsyncExitStack() as stack:
            calls = [await stack.enter_async_context(open_ws(port)) for _ in range(sockets)]
            session = await stack.enter_async_context(open_ws(port, "/ws/session/adder"))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=gw.url))
            # Warm the pool up: 50 connections, so that the 50 calls below all
            # start at once instead of waiting for handshakes.
            for ws in calls:
                for i in range(per_socket):
                    payload = {"op": "sleep", "seconds": 0.3}
                    await ws.send(orjson.dumps({"id": i, "payload": payload}).decode())
            for ws in calls:
                for _ in range(per_socket):
                    assert "result" in await recv_json(ws, timeout=20)
            for n, ws in enumerate(calls):
                for i in range(per_socket):
                    payload = {"op": "sleep", "seconds": 1, "value": f"{n}-{i}"}
                    await ws.send(orjson.dumps({"id": f"{n}-{i}", "payload": payload}).decode())

            async def all_in_flight() -> bool:
                stats = (await client.get("/backends")).json()["backends"][0]["stats"]
                # The session holds a dedicated connection, outside the pool's count.
                return stats["in_use"] == sockets * per_socket

            await wait_until(all_in_flight, what="the 50 calls to be in flight")
            gw.proc.send_signal(signal.SIGTERM)
            ends = await asyncio.gather(*(until_closed(ws, timeout=20) for ws in calls))
            session_end = await until_closed(session, timeout=20)
        assert await gw.wait() == 0, gw.output()
    replies = [m for end in ends for m in end.messages]
    assert sorted(r["id"] for r in replies) == sorted(
        f"{n}-{i}" for n in range(sockets) for i in range(per_socket)
    )
    assert all(r["result"] == r["id"] for r in replies), replies
    for end in ends:
        assert end.code == 1001
        assert end.reason.startswith("shutting-down: ")
    assert session_end.code == 1012
    assert session_end.reason.startswith("shutting-down: ")


async def test_calls_past_the_grace_are_answered_with_shutting_down(tmp_path, demo):
    async with running(tmp_path, demo, shutdown_grace=1) as gw:
        async with open_ws(port_of(gw.url)) as ws:
            await ws.send('{"id": "long", "payload": {"op": "sleep", "seconds": 5}}')
            await ws.send('{"id": "short", "payload": {"op": "sleep", "seconds": 0.2}}')

            async def in_flight() -> bool:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    stats = (await client.get("/backends")).json()["backends"][0]["stats"]
                return stats["in_use"] == 2

            await wait_until(in_flight, what="the calls to be in flight")
            gw.proc.send_signal(signal.SIGTERM)
            end = await until_closed(ws, timeout=20)
        assert await gw.wait() == 0, gw.output()
    by_id = {m["id"]: m for m in end.messages}
    assert by_id["short"]["result"] == 0.2
    assert by_id["long"]["error"]["type"] == problem_type("shutting-down")
    assert end.code == 1001
