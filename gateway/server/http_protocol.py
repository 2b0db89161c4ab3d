"""uvicorn's httptools protocol, with the bounds a hostile client would otherwise escape.

uvicorn closes a connection that stays idle between requests
(``timeout_keep_alive``) but gives a request all the time it wants to send
its headers, and no bound to their size; after a response sent before the
body was read (an early 413), it closes the socket with unread bytes in it,
so the kernel answers the client's next segments with a reset and a client
still sending (Python's ``urllib``) never sees the response. This protocol
adds:

* ``header_timeout``: from the connection's first byte (or its opening)
  to the end of the request's headers; past it, 408 ``request-timeout``;
* ``max_header_bytes``: past it, 431 ``headers-too-large``;
* the connection cap of :class:`~gateway.server.limits.ClientLimits`: a
  connection waiting for a request may be closed to make room, and a
  connection over the cap with nothing to close gets 503
  ``too-many-connections``;
* lingering close: when the response is complete but the request body is
  not, the gateway half-closes and reads and drops what the client still
  sends, for at most ``linger_timeout`` seconds and ``linger_bytes`` bytes;
* one write per response: uvicorn writes the status line and headers, then
  the body, with a system call each; here they leave together (see
  :class:`_CycleTransport`).

The body itself is timed by the route that reads it (``body_timeout``, in
:func:`gateway.body.read_json`), where a 408 can still be rendered by the app.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any, ClassVar

import orjson

from ..problems import (
    MEDIA_TYPE,
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    TooManyConnections,
    describe,
    problem_body,
)
from ..settings import GatewaySettings
from .limits import ClientLimits
from .malformed import ProblemHttpToolsProtocol

__all__ = ["GatewayHttpProtocol", "http_protocol", "raw_problem"]

#: Seconds the protocol's own answers (408, 431, 503) linger at most.
_ANSWER_LINGER = 1.0
#: A response body up to this size is written in one buffer with its head.
_JOIN_LIMIT = 64 * 1024


def raw_problem(exc: GatewayError) -> bytes:
    """A whole HTTP/1.1 problem response for ``exc``, closing the connection.

    For answers written by the protocol itself, outside any request the app sees.
    """
    row, detail, extras, _ = describe(exc)
    body = orjson.dumps(problem_body(row, detail, extras=extras))
    head = [
        f"HTTP/1.1 {row.status} {row.title}",
        f"content-type: {MEDIA_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if row.retry_after is not None:
        head.append(f"retry-after: {row.retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class _CycleTransport:
    """What a request's cycle sees of the transport: its ``close`` may linger.

    The cycle's first write (the status line and headers) is held until its
    next one (the body, written right after it by the same task), and both
    go out in one ``write``: one system call per response instead of two. A
    head that no body follows within the loop iteration (a stream whose
    first item is not ready, a ``100 Continue``) is written on its own then.
    A body over :data:`_JOIN_LIMIT` is written after the head rather than
    copied into one buffer with it.
    """

    def __init__(self, protocol: GatewayHttpProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._first = True
        self._held: bytes | None = None
        self._release: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            assert self._release is not None
            self._release.cancel()
            self._release = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(held + data)
                return
            self._transport.write(held)
        elif self._first:
            self._first = False
            self._held = data
            self._release = self._protocol.loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any."""
        held = self._held
        if held is not None:
            self._held = None
            if self._release is not None:
                self._release.cancel()
                self._release = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._protocol.close_after_response()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class GatewayHttpProtocol(ProblemHttpToolsProtocol):
    """One client connection; :func:`http_protocol` binds the settings and the shared limits."""

    limits: ClassVar[ClientLimits]
    settings: ClassVar[GatewaySettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = False
        self._counted = False
        self._header_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None
        self._header_bytes = 0
        self._oversized = False
        self._linger_left = 0

    # the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.limits.open(self):
            self._answer(TooManyConnections("the gateway holds its most client connections"))
            return
        self._counted = True
        self.limits.waiting(self)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._counted:
            self._counted = False
            self.limits.close(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Close to make room for a new connection (this one holds no request)."""
        self._cancel_timers()
        if self._counted:
            self._counted = False
            self.limits.close(self)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._stop_lingering()
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self._oversized:
            most = self.settings.max_header_bytes
            self._answer(HeadersTooLarge(f"the request headers exceed {most} bytes"))
            return
        super().send_400_response(msg)

    # the request

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.settings.max_header_bytes:
            # httptools turns this into a parser error: send_400_response answers 431.
            self._oversized = True
            raise ValueError("request headers too large")

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._counted:
            self.limits.busy(self)
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.transport = _CycleTransport(self)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        # A response with no body write (an answer to HEAD) is complete with
        # its head still held: it goes out now, before anything can close.
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, _CycleTransport):
            cycle.transport.flush()
        super().on_response_complete()
        if self._counted and not self.lingering and not self.transport.is_closing():
            self.limits.waiting(self)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes this connection (and its count) over.
        self._cancel_timers()
        if self._counted:
            self.limits.busy(self)
            self._counted = False
        super().handle_websocket_upgrade()

    def timeout_keep_alive_handler(self) -> None:
        if not self.lingering:
            super().timeout_keep_alive_handler()

    # closing

    def close_after_response(self) -> None:
        """The cycle closes the connection: linger when the body is still coming."""
        cycle = self.cycle
        settings = self.settings
        unread = cycle is not None and cycle.more_body and not self.transport.is_closing()
        if not unread:
            self.transport.close()
            return
        self._linger(settings.linger_timeout)

    def _linger(self, seconds: float) -> None:
        """Half-close, then read and drop for ``seconds`` (and ``linger_bytes``), then close."""
        if seconds <= 0 or self.settings.linger_bytes <= 0:
            self.transport.close()
            return
        self.lingering = True
        self._linger_left = self.settings.linger_bytes
        if self._counted:
            # Nothing of value is left here: first in line to make room.
            self.limits.waiting(self)
        # Whatever paused reading (a body bigger than uvicorn's buffer) is moot now.
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(seconds, self._stop_lingering)

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self.settings.header_timeout, self._headers_timed_out
        )

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.lingering:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined response is being written
            return
        timeout = self.settings.header_timeout
        self._answer(RequestTimeout(f"the request headers were not received within {timeout:g} s"))

    def _answer(self, exc: GatewayError) -> None:
        """Write a problem response and close: the protocol's own answers.

        The close lingers (a second at most), so that a request already on
        its way does not turn the answer into a reset.
        """
        self._cancel_timers()
        if not self.transport.is_closing() and not self.lingering:
            self.transport.write(raw_problem(exc))
            self._linger(min(self.settings.linger_timeout, _ANSWER_LINGER))

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger_timer = None


def http_protocol(settings: GatewaySettings, limits: ClientLimits) -> type[GatewayHttpProtocol]:
    """The class to give ``uvicorn.Config(http=...)``, bound to ``settings`` and ``limits``."""
    return type(
        "GatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {"settings": settings, "limits": limits, "__module__": __name__},
    )
