"""The gateway's WebSocket protocol writes the frames of one loop iteration together.

A small ASGI app under uvicorn with the gateway's own protocols
(:mod:`gateway.server`), a real ``websockets`` client over a real socket.
The protocol's transport is wrapped so that each ``write`` it makes is
recorded on its way to the real transport: the bytes still reach the
client, which checks what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import uvicorn
from gateway_support import RecordedTransport
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from ws_support import WAIT, running_uvicorn, server_frames

from gateway.server.http_protocol import http_protocol
from gateway.server.limits import ClientLimits
from gateway.server.websocket_protocol import websocket_protocol
from gateway.settings import GatewaySettings, WebSocketSettings

pytestmark = pytest.mark.timeout(60)

#: The smallest write buffer the settings accept.
MARK = 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts, reads one command, sends what it says, then waits for the client to go.

    ``burst N SIZE``: N text messages of SIZE bytes, one after the other;
    ``close N``: N messages, then a close frame (4000); ``return N``: N
    messages, then the app returns at once.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    command, count, *size = (await receive())["text"].split()
    width = int(size[0]) if size else 8
    for n in range(int(count)):
        await send({"type": "websocket.send", "text": str(n).rjust(width, "x")})
    if command == "return":
        return
    if command == "close":
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@contextlib.asynccontextmanager
async def serve(writes: list[bytes]) -> AsyncIterator[int]:
    """The app under uvicorn with the gateway's protocols; yields the port."""
    limits = ClientLimits(max_connections=16, max_sockets=16)
    socket_settings = WebSocketSettings(write_buffer_bytes=MARK)
    bound = websocket_protocol(socket_settings, limits)

    class Recorded(bound):  # type: ignore[misc, valid-type]
        recorded: ClassVar[list[bytes]] = writes

        def connection_made(self, transport: Any) -> None:
            super().connection_made(RecordedTransport(transport, self.recorded))

    config = uvicorn.Config(
        app,
        port=0,
        log_config=None,
        lifespan="on",
        http=http_protocol(GatewaySettings(), limits),
        ws=Recorded,
        ws_per_message_deflate=False,  # the gateway's default
    )
    async with running_uvicorn(config) as port:
        yield port


async def received(
    port: int, command: str, count: int, *, ends: bool = False
) -> tuple[list[str], Any]:
    """Send ``command`` and read ``count`` messages; with ``ends``, then the server's close.

    Returns the messages and the close frame received (None: none, or not read).
    """
    async with connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT) as ws:
        await ws.send(command)
        messages = [str(await asyncio.wait_for(ws.recv(), WAIT)) for _ in range(count)]
        if not ends:
            return messages, None
        try:
            extra = await asyncio.wait_for(ws.recv(), WAIT)
        except ConnectionClosed as exc:
            return messages, exc.rcvd
        raise AssertionError(f"one message more than sent: {extra!r}")


async def test_messages_sent_in_one_go_leave_in_one_write():
    writes: list[bytes] = []
    async with serve(writes) as port:
        messages, ending = await received(port, "burst 10", 10)
    assert messages == [str(n).rjust(8, "x") for n in range(10)]
    assert ending is None
    # The handshake's response, then the ten frames together.
    assert writes[0].startswith(b"HTTP/1.1 101")
    frames = [payload for opcode, payload in server_frames(writes[1]) if opcode == 1]
    assert frames == [m.encode() for m in messages]


async def test_a_close_after_messages_leaves_with_them_in_order():
    writes: list[bytes] = []
    async with serve(writes) as port:
        messages, ending = await received(port, "close 3", 3, ends=True)
    assert messages == [str(n).rjust(8, "x") for n in range(3)]
    assert (ending.code, ending.reason) == (4000, "done")
    frames = server_frames(writes[1])
    assert [opcode for opcode, _ in frames] == [1, 1, 1, 8]


async def test_messages_sent_just_before_the_app_returns_are_delivered():
    writes: list[bytes] = []
    async with serve(writes) as port:
        messages, ending = await received(port, "return 3", 3, ends=True)
    assert messages == [str(n).rjust(8, "x") for n in range(3)]
    assert ending is None  # uvicorn closes the connection without a close frame


async def test_waiting_frames_are_written_once_they_reach_the_write_buffer_mark():
    # 300-byte messages against a mark of 1024: the fourth one reaches it.
    size, count = 300, 10
    writes: list[bytes] = []
    async with serve(writes) as port:
        messages, _ = await received(port, f"burst {count} {size}", count)
    assert messages == [str(n).rjust(size, "x") for n in range(count)]
    frame = size + 4  # a 2-byte header and a 16-bit length
    # Then the answer to the client's close frame.
    assert [len(data) for data in writes[1:]] == [4 * frame, 4 * frame, 2 * frame, 4]
    assert all(len(data) < MARK + frame for data in writes[1:])
