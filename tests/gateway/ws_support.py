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
import uvicorn
from gateway_support import RunningGateway, backend_config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.app import create_app
from gateway.cli import uvicorn_options
from gateway.routes.ws import WebSocketHub, websocket_hub
from gateway.settings import Settings

#: Bound of every wait on a socket in these tests.
WAIT = 10.0


def config(
    demo: Any, tmp_path: Path, websocket: Mapping[str, Any] | None = None, **backend: Any
) -> dict[str, Any]:
    """Gateway settings with the one backend ``demo`` (and ``[websocket]`` if given)."""
    settings: dict[str, Any] = {"backends": {"demo": backend_config(demo, tmp_path, **backend)}}
    if websocket:
        settings["websocket"] = dict(websocket)
    return settings


def pool_stats(gw: RunningGateway, name: str = "demo") -> dict[str, Any]:
    """The statistics of the pool of backend ``name`` in the served gateway."""
    return gw.state.backends[name].running_pool().stats()


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
    """A ``websockets`` client of ``path`` on the gateway (or on a port); closed at the end."""
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


@contextlib.asynccontextmanager
async def serve_with_ws_options(settings: Settings) -> AsyncIterator[tuple[WebSocketHub, int]]:
    """The app under uvicorn with the ``[websocket]`` options the command line passes.

    Yields the app's hub and the port.
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app, port=0, log_config=None, lifespan="on", **uvicorn_options(settings.websocket)
    )
    async with running_uvicorn(config) as port:
        yield websocket_hub(app), port


@contextlib.asynccontextmanager
async def running_uvicorn(config: uvicorn.Config) -> AsyncIterator[int]:
    """Serve ``config`` in this loop until the block ends; yields the port it bound."""
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if serving.done():
                    raise RuntimeError("uvicorn did not start")
                await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(opcode, payload)`` of the unmasked frames a server sent (short frames only)."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert length < 126, "only short control frames are expected here"
        frames.append((opcode, data[2 : 2 + length]))
        data = data[2 + length :]
    return frames
