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
* It writes each message the app sends with a ``write`` of its own: one
  system call per reply. Here the frames of one loop iteration are written
  together (see "Coalesced writes" below).

Coalesced writes
    A ``websocket.send`` only frames the message: the frame waits in the
    sans-I/O protocol's output (``conn.data_to_send()``), and one callback,
    scheduled with ``call_soon`` for the first frame, writes everything that
    waits at the end of the loop iteration. The app's writer sends its
    queued messages one after the other without yielding, so the replies
    that became ready together leave in one ``write``. Every other write of
    uvicorn's protocol (a pong, a close frame, a refusal) takes that output
    first, so the order on the wire stays the order of the sends. The
    frames waiting count against ``write_buffer_bytes``: once they and the
    transport's buffer reach it, they are written at once, so the transport
    pauses the app's sends (and starts the ``slow-client`` clock) as it did
    when each frame was written on its own. Frames still waiting when the
    app returns are written before uvicorn closes the transport.
"""

from __future__ import annotations

import asyncio
from asyncio import Handle, TimerHandle
from typing import Any, ClassVar, Final

from uvicorn._types import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from ..problems import TooManyConnections
from ..settings import WebSocketSettings
from .http_protocol import raw_problem
from .limits import ClientLimits
from .loop_queue import LoopQueue

__all__ = ["DRAIN_EXTENSION", "GatewayWebSocketProtocol", "websocket_protocol"]

#: The ASGI extension through which the app learns that the server is draining.
DRAIN_EXTENSION: Final = "connbridge.drain"


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """One WebSocket; :func:`websocket_protocol` binds the settings and the shared limits."""

    limits: ClassVar[ClientLimits]
    settings: ClassVar[WebSocketSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's queue of received messages, as one that knows its loop (no getpid() per wait).
        self.queue = LoopQueue(self.loop)
        self.close_timeout = self.settings.close_timeout
        self.drain = asyncio.Event()
        #: Reading stopped because the client does not read what is written.
        self._write_blocked = False
        self._slow_timer: TimerHandle | None = None
        self._abort_timer: TimerHandle | None = None
        self._socket_counted = False
        self._app_running = False
        #: The flush of the frames that wait in ``conn``'s output; None when none waits.
        self._flush_handle: Handle | None = None
        #: Bytes of message data framed since the last write.
        self._unflushed = 0
        self._served_app = self.app
        self.app = self._serve_then_flush

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        most = self.settings.write_buffer_bytes
        self.transport.set_write_buffer_limits(high=most, low=most // 4)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._slow_timer, self._abort_timer, self._flush_handle):
            if timer is not None:
                timer.cancel()
        self._slow_timer = self._abort_timer = self._flush_handle = None
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

    # coalesced writes

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.send":
            await self.writable.wait()
            if self.handshake_complete and not self.close_sent and self.initial_response is None:
                self._frame(message.get("bytes"), message.get("text"))
                return
            # Refused, closed or gone: uvicorn's own answer (ClientDisconnected, an error).
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer calls close(), which waits for the buffer to drain.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def _frame(self, data: bytes | None, text: str | None) -> None:
        """Frame one message into ``conn``'s output; it is written by :meth:`_flush`."""
        if self.disconnected:
            raise ClientDisconnected
        try:
            if data is not None:
                self.conn.send_binary(data)
            elif text is not None:
                data = text.encode()
                self.conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected from None
        self._unflushed += len(data) if data is not None else 0
        waiting = self._unflushed + self.transport.get_write_buffer_size()
        if waiting >= self.settings.write_buffer_bytes:
            self._flush()  # the transport's high-water mark now pauses the next send
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the frames that wait in ``conn``'s output, in one ``write``."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._unflushed = 0
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))

    async def _serve_then_flush(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        # uvicorn closes the transport as soon as the app returns.
        try:
            await self._served_app(scope, receive, send)
        finally:
            if self._flush_handle is not None:
                self._flush()

    # closing

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
