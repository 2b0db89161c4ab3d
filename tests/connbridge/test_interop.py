"""Our asyncio client against real stdlib Listeners of every Python, and their Client against us.

Each test runs once per interpreter under /root/.pyenv/versions (2.7, 3.6-3.13).
"""

from __future__ import annotations

import asyncio

import pytest

from connbridge.connection import connect
from connbridge.errors import AuthenticationError, HandshakeError, HandshakeTimeout
from connbridge.server import start_server
from tests.conftest import TEST_AUTHKEY, Interpreter

pytestmark = pytest.mark.interop


def highest_protocol(interp: Interpreter) -> int:
    if interp.version < (3, 0):
        return 2
    if interp.version < (3, 8):
        return 4
    return 5


@pytest.mark.parametrize("transport", ["tcp", "unix", "ipv6"])
async def test_right_key_round_trip(
    start_backend, interpreter: Interpreter, transport: str
) -> None:
    address = {"tcp": "127.0.0.1:0", "unix": "unix:", "ipv6": "[::1]:0"}[transport]
    backend = await asyncio.to_thread(
        start_backend, "listener", python=interpreter, address=address
    )
    conn = await connect(
        backend.address, authkey=TEST_AUTHKEY, pickle_protocol=interpreter.pickle_protocol
    )
    async with conn:
        await conn.send((5, 6))
        assert await conn.recv() == 11
        await conn.send(("mark", "帅哥"))
        assert await conn.recv() == "mark帅哥"
    expected = "sha256" if interpreter.version >= (3, 12) else "legacy"
    assert conn.peer_dialect == expected


async def test_every_pickle_protocol_the_server_reads(
    start_backend, interpreter: Interpreter
) -> None:
    backend = await asyncio.to_thread(start_backend, "listener", python=interpreter)
    value = {"op": "echo", "value": [1, "two", 3.5, (4, 5), {"six": None}, True]}
    for protocol in range(highest_protocol(interpreter) + 1):
        async with await connect(
            backend.address, authkey=TEST_AUTHKEY, pickle_protocol=protocol
        ) as conn:
            await conn.send(value)
            assert await conn.recv() == value["value"], f"protocol {protocol}"


async def test_wrong_key_is_refused_quickly(start_backend, interpreter: Interpreter) -> None:
    backend = await asyncio.to_thread(start_backend, "listener", python=interpreter)
    bad_key = b"not-the-key-7f3a"
    with pytest.raises(AuthenticationError) as info:
        async with asyncio.timeout(10):
            await connect(backend.address, authkey=bad_key, handshake_timeout=5)
    assert bad_key.decode() not in str(info.value)
    assert TEST_AUTHKEY.decode("latin-1") not in str(info.value)
    assert backend.alive()


async def test_key_only_on_the_client_times_out_with_a_hint(
    start_backend, interpreter: Interpreter
) -> None:
    backend = await asyncio.to_thread(start_backend, "listener", python=interpreter, authkey=None)
    with pytest.raises(HandshakeTimeout, match="no authkey"):
        async with asyncio.timeout(10):
            await connect(backend.address, authkey=TEST_AUTHKEY, handshake_timeout=0.5)


async def test_key_only_on_the_server_is_reported(start_backend, interpreter: Interpreter) -> None:
    backend = await asyncio.to_thread(start_backend, "listener", python=interpreter)
    async with await connect(backend.address, pickle_protocol=interpreter.pickle_protocol) as conn:
        await conn.send((1, 2))
        with pytest.raises(HandshakeError, match="requires an authkey"):
            async with asyncio.timeout(10):
                await conn.recv()


async def test_md5_refused_for_legacy_servers_when_disallowed(
    start_backend, interpreter: Interpreter
) -> None:
    backend = await asyncio.to_thread(start_backend, "listener", python=interpreter)
    if interpreter.version >= (3, 12):
        async with await connect(backend.address, authkey=TEST_AUTHKEY, allow_md5=False) as conn:
            await conn.send((5, 6))
            assert await conn.recv() == 11
    else:
        with pytest.raises(AuthenticationError, match="allow_md5"):
            await connect(backend.address, authkey=TEST_AUTHKEY, allow_md5=False)


async def test_their_client_against_our_server(stdlib_client, interpreter: Interpreter) -> None:
    from connbridge.connection import Connection
    from connbridge.errors import ConnectionClosed

    async def add(conn: Connection) -> None:
        while True:
            try:
                x, y = await conn.recv()  # type: ignore[misc]
            except ConnectionClosed:
                return
            await conn.send(x + y)

    server = await start_server(
        add, "127.0.0.1:0", authkey=TEST_AUTHKEY, pickle_protocol=interpreter.pickle_protocol
    )
    try:
        lines = await asyncio.to_thread(
            stdlib_client, interpreter, str(server.address), [(5, 6), ("mark", "帅哥")]
        )
    finally:
        await server.close()
    assert [line.get("reply", line) for line in lines] == [11, "mark帅哥"]
