"""An asyncio Listener: the server half of the protocol.

It accepts what the stdlib ``Client`` sends, runs the server half of the
handshake (challenge first, then answer the client's challenge, as
``Listener.accept`` does) and hands each authenticated connection to a
handler coroutine. The gateway does not need it to serve traffic; it lets the
tests pair our client with our server, check the stdlib ``Client`` against
our server half, and play hostile backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from .addresses import Address, AddressLike, parse_address
from .connection import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    Connection,
    Dumps,
    FrameProtocol,
    Loads,
    run_with_timeout,
)
from .errors import ConnbridgeError
from .frames import DEFAULT_MAX_FRAME
from .handshake import ServerHandshake

__all__ = ["Handler", "Server", "start_server"]

logger = logging.getLogger(__name__)

Handler = Callable[[Connection], Awaitable[None]]


class Server:
    """A running asyncio Listener; close it with :meth:`close` or ``async with``."""

    def __init__(self, server: asyncio.Server, address: Address) -> None:
        self._server = server
        #: The bound address (with the real port when 0 was asked for).
        self.address = address
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop accepting and cancel the handlers still running."""
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        if self.address.family == "unix" and not self.address.path.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_server(
    handler: Handler,
    address: AddressLike,
    *,
    authkey: bytes | None = None,
    digest: str = "sha256",
    allow_md5: bool = True,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    pickle_protocol: int = 4,
    loads: Loads | None = None,
    dumps: Dumps | None = None,
) -> Server:
    """Listen on ``address`` and run ``handler(conn)`` for each authenticated client.

    ``digest`` picks the challenge: a name from
    :data:`~connbridge.handshake.ALLOWED_DIGESTS` (modern, as Python 3.12+)
    or ``"legacy"`` (20 bytes for HMAC-MD5, as Python <= 3.11). A client that
    fails the handshake is disconnected and never reaches the handler. The
    connection is closed when the handler returns.
    """
    addr = parse_address(address)
    loop = asyncio.get_running_loop()
    holder: list[Server] = []

    def factory() -> FrameProtocol:
        return FrameProtocol(max_frame, on_connect=_spawn)

    def _spawn(stream: FrameProtocol) -> None:
        task = loop.create_task(_serve_one(stream))
        server = holder[0]
        server._tasks.add(task)
        task.add_done_callback(server._tasks.discard)

    async def _serve_one(stream: FrameProtocol) -> None:
        peer = holder[0].address
        conn = Connection(
            stream,
            peer,
            max_frame=max_frame,
            pickle_protocol=pickle_protocol,
            loads=loads,
            dumps=dumps,
        )
        try:
            if authkey is not None:
                handshake = ServerHandshake(authkey, allow_md5=allow_md5, digest=digest)
                await run_with_timeout(
                    conn.run_handshake(handshake), handshake_timeout, peer, handshake
                )
            await handler(conn)
        except ConnbridgeError as exc:
            logger.debug("connection on %s ended: %s", peer, exc)
        finally:
            await conn.close(timeout=1.0)

    if addr.family == "unix":
        raw = await loop.create_unix_server(factory, addr.path)
        bound = addr
    else:
        raw = await loop.create_server(factory, addr.host, addr.port)
        sockname = raw.sockets[0].getsockname()
        bound = Address("tcp", host=addr.host, port=sockname[1])
    holder.append(Server(raw, bound))
    return holder[0]
