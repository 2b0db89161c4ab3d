"""Helpers of the WebSocket tests: a real ``websockets`` client against the served gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from gateway_support import RunningGateway
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.routes.ws import WebSocketHub, websocket_hub

#: Bound of every wait on a socket in these tests.
WAIT = 10.0


def hub(gw: RunningGateway) -> WebSocketHub:
    return websocket_hub(gw.app)


@contextlib.asynccontextmanager
async def open_ws(
    gw: RunningGateway | int,
    path: str = "/ws",
    *,
    headers: Mapping[str, str] | None = None,
    sock: socket.socket | None = None,
    **options: Any,
) -> AsyncIterator[ClientConnection]:
    """A ``websockets`` client connection to ``path`` on the gateway (or a port); closed at the end."""
    port = gw if isinstance(gw, int) else gw.port
    options.setdefault("open_timeout", WAIT)
    options.setdefault("close_timeout", 2)
    async with connect(
        f"ws://127.0.0.1:{port}{path}",
        additional_headers=dict(headers or {}),
        proxy=None,
        sock=sock,
        **options,
    ) as ws:
        yield ws


async def recv_json(ws: ClientConnection, timeout: float = WAIT) -> Any:
    text = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(text, str), "the gateway sends text messages"
    return orjson.loads(text)


@dataclass
class Closed:
    code: int | None
    reason: str
    #: Messages received before the close frame.
    messages: list[Any] = field(default_factory=list)


async def until_closed(ws: ClientConnection, timeout: float = WAIT) -> Closed:
    """Read until the gateway closes the socket; the close code, reason and what came before."""
    messages: list[Any] = []

    async def read() -> Closed:
        while True:
            try:
                text = await ws.recv()
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                return Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "", messages)
            messages.append(orjson.loads(text))

    return await asyncio.wait_for(read(), timeout)


def small_buffer_socket(port: int) -> socket.socket:
    """A connected TCP socket with a tiny receive buffer: a client that reads slowly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def process_threads(pid: int) -> int:
    """Threads of a process (Linux): the demo backend runs one per connection."""
    return len(os.listdir(f"/proc/{pid}/task"))


def process_sockets(pid: int | str = "self") -> int:
    """Open socket descriptors of a process (Linux)."""
    count = 0
    directory = Path(f"/proc/{pid}/fd")
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry).startswith("socket:"):
                count += 1
    return count
