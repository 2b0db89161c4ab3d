"""The asyncio connection against our server half and against hostile peers."""

from __future__ import annotations

import asyncio
import io
import pickle
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from connbridge.connection import Connection, connect
from connbridge.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    RefusedGlobal,
)
from connbridge.frames import frame_header
from connbridge.server import Server, start_server

KEY = b"k3y"

Handler = Callable[[Connection], Awaitable[None]]


async def echo(conn: Connection) -> None:
    while True:
        try:
            obj = await conn.recv()
        except ConnectionClosed:
            return
        await conn.send(obj)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler = echo, address: str = "127.0.0.1:0", **kw: object) -> Server:
        server = await start_server(handler, address, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha3_256", "sha3_384", "md5", "legacy"])
async def test_round_trip_with_each_challenge_digest(serve, digest: str) -> None:
    server = await serve(authkey=KEY, digest=digest)
    async with await connect(server.address, authkey=KEY) as conn:
        await conn.send((5, 6))
        assert await conn.recv() == (5, 6)
        assert conn.peer_dialect == digest


@pytest.mark.parametrize("family", ["unix", "abstract", "ipv6"])
async def test_round_trip_over_each_transport(serve, family: str, tmp_path: Path) -> None:
    address = {
        "unix": f"unix:{tmp_path}/s.sock",
        "abstract": f"unix:@connbridge-test-{id(tmp_path)}",
        "ipv6": "[::1]:0",
    }[family]
    server = await serve(address=address, authkey=KEY)
    async with await connect(server.address, authkey=KEY) as conn:
        await conn.send(["mark", "帅哥"])
        assert await conn.recv() == ["mark", "帅哥"]


async def test_tcp_nodelay_is_on(serve) -> None:
    server = await serve()
    async with await connect(server.address) as conn:
        sock = conn._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_wrong_key_is_an_authentication_error_without_the_key(serve) -> None:
    server = await serve(authkey=KEY)
    with pytest.raises(AuthenticationError) as info:
        await connect(server.address, authkey=b"not-the-key", handshake_timeout=5)
    assert "not-the-key" not in str(info.value) and "k3y" not in str(info.value)


async def test_server_without_key_gives_a_bounded_clear_timeout(serve) -> None:
    server = await serve(authkey=None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HandshakeTimeout, match="no authkey"):
        await connect(server.address, authkey=KEY, handshake_timeout=0.3)
    assert loop.time() - started < 5


async def test_client_without_key_against_keyed_server_is_told_so(serve) -> None:
    server = await serve(authkey=KEY)
    async with await connect(server.address) as conn:
        await conn.send(1)
        with pytest.raises(HandshakeError, match="requires an authkey"):
            await conn.recv()


async def test_connect_refused_is_a_connect_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ConnectError, match="cannot connect"):
        await connect(f"127.0.0.1:{port}")


async def test_oversized_frame_refused_from_its_header(serve) -> None:
    sent = asyncio.Event()

    async def liar(conn: Connection) -> None:
        await conn.recv_bytes()
        conn._transport.write(frame_header(2**30))  # announce 1 GiB, send none of it
        sent.set()
        await asyncio.sleep(30)

    server = await serve(liar)
    conn = await connect(server.address, max_frame=1024 * 1024)
    await conn.send_bytes(b"go")
    with pytest.raises(FrameTooLarge) as info:
        async with asyncio.timeout(5):
            await conn.recv_bytes()
    assert info.value.size == 2**30
    assert conn.closed
    await conn.close()


async def test_handshake_message_over_256_bytes_is_refused(serve) -> None:
    async def bad_challenger(conn: Connection) -> None:
        await conn.send_bytes(b"#CHALLENGE#" + bytes(300))
        await asyncio.sleep(30)

    server = await serve(bad_challenger)
    with pytest.raises(HandshakeError, match="malformed"):
        await connect(server.address, authkey=KEY, handshake_timeout=5)


class CreatesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (io.open, (self.path, "w"))


async def test_hostile_pickle_never_runs_and_names_the_global(serve, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps(CreatesAFile(str(target)))

    async def hostile(conn: Connection) -> None:
        await conn.recv_bytes()
        await conn.send_bytes(payload)
        await conn.recv_bytes()

    server = await serve(hostile)
    async with await connect(server.address) as conn:
        await conn.send("hello")
        with pytest.raises(RefusedGlobal) as info:
            await conn.recv()
        assert "io.open" in str(info.value) or "_io.open" in str(info.value)
    assert not target.exists()


async def test_large_payload_round_trip(serve) -> None:
    server = await serve(authkey=KEY)
    blob = bytes(range(256)) * (10 * 4096)  # 10 MiB
    async with await connect(server.address, authkey=KEY) as conn:
        await conn.send(blob)
        assert await conn.recv() == blob


async def test_peer_close_is_connection_closed(serve) -> None:
    async def closer(conn: Connection) -> None:
        await conn.recv_bytes()

    server = await serve(closer)
    async with await connect(server.address) as conn:
        await conn.send_bytes(b"x")
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await conn.recv_bytes()
        assert conn.peer_closed and conn.has_pending_input()


async def test_a_reply_taken_for_a_cancelled_reader_is_kept(serve) -> None:
    server = await serve()
    async with await connect(server.address) as conn:
        reader = asyncio.ensure_future(conn.recv_bytes())
        await asyncio.sleep(0)  # the reader now waits
        # The reply arrives and is handed to the waiting reader, which is
        # cancelled before it gets to run: the payload must not be lost.
        conn._stream.data_received(frame_header(5) + b"reply")
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert conn.has_pending_input()
        assert await conn.recv_bytes() == b"reply"


async def test_only_one_reader_at_a_time(serve) -> None:
    server = await serve()
    async with await connect(server.address) as conn:
        first = asyncio.ensure_future(conn.recv_bytes())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already receiving"):
            await conn.recv_bytes()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_close_sends_eof_and_the_server_sees_a_clean_end(serve) -> None:
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def watcher(conn: Connection) -> None:
        try:
            await conn.recv_bytes()
        except ConnectionClosed as exc:
            ended.set_result(type(exc).__name__ + ":" + str(exc))

    server = await serve(watcher)
    conn = await connect(server.address)
    await conn.close()
    assert "closed the connection" in await asyncio.wait_for(ended, 5)
    assert conn.closed
    with pytest.raises(ConnectionClosed):
        await conn.send_bytes(b"late")


async def test_stdlib_client_against_our_server(serve, stdlib_client) -> None:
    from tests.conftest import CURRENT, TEST_AUTHKEY

    server = await serve(authkey=TEST_AUTHKEY)
    lines = await asyncio.to_thread(
        stdlib_client, CURRENT, str(server.address), [(5, 6), ["mark", "帅哥"]]
    )
    assert [line["reply"] for line in lines] == [{"__tuple__": [5, 6]}, ["mark", "帅哥"]]
