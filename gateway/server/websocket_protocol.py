"""uvicorn's websockets-sansio protocol, with a bounded write buffer, bounded closes and a drain.

What uvicorn's protocol leaves open, and what this one does about it:

* It answers every ping at once, whether or not the client reads the
  pongs: a client that floods pings and never reads made the gateway's
  buffer grow by tens of MiB a second, with or without an API key. Here the
  transport's buffer has a high-water mark (``write_buffer_bytes``); over it
  the protocol stops reading from the client (no more pings are parsed, no
  more calls), and a client that keeps it over the mark for
  ``send_timeout`` seconds is dropped with 1008 ``slow-client``.
* After its close frame (a refusal before authentication included) it
  waits 10 s for the client's, reading and answering meanwhile, then calls
  ``close()``, which waits forever for a buffer that a non-reading client
  never drains. Here the wait is ``close_timeout`` and the transport is then
  aborted; so is the transport of a handler that ended with unsent bytes.
* On shutdown it closes every socket at once with 1012 and no reason, so
  replies in flight are lost. Here the app is told instead, through the
  ``connbridge.drain`` ASGI extension (an :class:`asyncio.Event` in the
  scope's ``extensions``), and closes the socket itself once its calls are
  answered (see :mod:`gateway.websocket.link`); uvicorn's
  ``timeout_graceful_shutdown`` bounds the wait.
* Open WebSockets are capped (``max_sockets``): past it the handshake gets a
  503 ``too-many-connections`` problem before the app runs.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any, ClassVar, Final

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from ..problems import TooManyConnections
from ..settings import WebSocketSettings
from .http_protocol import raw_problem
from .limits import ClientLimits

__all__ = ["DRAIN_EXTENSION", "GatewayWebSocketProtocol", "websocket_protocol"]

#: The ASGI extension through which the app learns that the server is draining.
DRAIN_EXTENSION: Final = "connbridge.drain"


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """One WebSocket; :func:`websocket_protocol` binds the settings and the shared limits."""

    limits: ClassVar[ClientLimits]
    settings: ClassVar[WebSocketSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.settings.close_timeout
        self.drain = asyncio.Event()
        #: Reading stopped because the client does not read what is written.
        self._write_blocked = False
        self._slow_timer: TimerHandle | None = None
        self._abort_timer: TimerHandle | None = None
        self._socket_counted = False
        self._app_running = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        most = self.settings.write_buffer_bytes
        self.transport.set_write_buffer_limits(high=most, low=most // 4)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._slow_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._slow_timer = self._abort_timer = None
        if self._socket_counted:
            self._socket_counted = False
            self.limits.close_socket()
        # The HTTP protocol handed its connection's count over at the upgrade.
        self.limits.close(self)
        super().connection_lost(exc)

    def evict(self) -> None:  # pragma: no cover - a WebSocket is never waiting
        self.transport.abort()

    # admission

    def handle_connect(self, event: Request) -> None:
        if not self.limits.open_socket():
            most = self.limits.max_sockets
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            self.transport.write(
                raw_problem(TooManyConnections(f"the gateway holds its most WebSockets ({most})"))
            )
            self.transport.close()
            return
        self._socket_counted = True
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:
            self.scope["extensions"][DRAIN_EXTENSION] = self.drain  # type: ignore[assignment]
            self._app_running = True

    # the write buffer

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._write_blocked:
            self._write_blocked = True
            if not self.read_paused:
                self.transport.pause_reading()
            self._slow_timer = self.loop.call_later(self.settings.send_timeout, self._drop_slow)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_blocked:
            self._write_blocked = False
            if self._slow_timer is not None:
                self._slow_timer.cancel()
                self._slow_timer = None
            if not self.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's, but reading stays stopped while the client does not read.
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self._write_blocked and not self.transport.is_closing():
                self.transport.resume_reading()
        return message

    def _drop_slow(self) -> None:
        self._slow_timer = None
        if self.disconnected:
            return
        timeout = self.settings.send_timeout
        reason = f"slow-client: nothing could be sent for {timeout:g} s"
        if not self.close_sent:
            self.conn.send_close(1008, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1008, "reason": reason})
        # The close frame waits behind what the client does not read: it may never get out.
        self.transport.abort()

    # closing

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer calls close(), which waits for the buffer to drain.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def handle_ping(self) -> None:
        if self.close_sent:
            # Past our close frame only the client's close matters.
            self.conn.data_to_send()
            return
        super().handle_ping()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._app_running = False
        if not self.disconnected and self._abort_timer is None:
            # close() was called; bytes the client does not read would hold it forever.
            self._abort_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def shutdown(self) -> None:
        if self._app_running and self.handshake_complete and not self.close_sent:
            # The app closes the socket itself, after its calls in flight.
            self.stop_keepalive()
            self.drain.set()
            return
        super().shutdown()


def websocket_protocol(
    settings: WebSocketSettings, limits: ClientLimits
) -> type[GatewayWebSocketProtocol]:
    """The class to give ``uvicorn.Config(ws=...)``, bound to ``settings`` and ``limits``."""
    return type(
        "GatewayWebSocketProtocol",
        (GatewayWebSocketProtocol,),
        {"settings": settings, "limits": limits, "__module__": __name__},
    )
