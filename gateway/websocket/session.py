"""The ``/ws/session/{backend}`` protocol: one socket bridged to one backend connection.

The connection is the session's own, opened by
:meth:`~connbridge.pool.Pool.open_dedicated` outside the pool's slots, so
sessions cannot starve the calls. Each text message is one JSON value,
decoded by the codec (after the backend's ``payload_schema``) and sent as
is; every object the backend sends is forwarded as one text message holding
its JSON encoding, nothing around it. Both directions run at once, as
workers of the socket's :class:`~gateway.websocket.link.Link`; a producer
waits for room in the outbox, which stops the reading of the backend.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson

from connbridge.codec import ResultFormat, to_json
from connbridge.connection import Connection
from connbridge.errors import ConnbridgeError, ConnectionClosed

from ..body import parse_json
from ..calls import decode_payload
from ..state import Backend, GatewayState
from .link import Close, Link, problem_reason, reason, too_big

__all__ = ["SESSION_ROUTE", "Session"]

#: The route template (also the ``endpoint`` label of ``connbridge_websocket_connections``).
SESSION_ROUTE: Final = "/ws/session/{backend}"


class Session:
    """Both directions of one bridged session, and its idle timer."""

    def __init__(
        self,
        link: Link,
        state: GatewayState,
        backend: Backend,
        conn: Connection,
        result_format: ResultFormat,
    ) -> None:
        self.link = link
        self.state = state
        self.backend = backend
        self.conn = conn
        self.result_format = result_format
        self.loop = asyncio.get_running_loop()
        self.last_message = self.loop.time()

    async def upstream(self) -> None:
        """Client to backend: each text message is decoded and sent as one object."""
        websocket, link, conn = self.link.websocket, self.link, self.conn
        most = link.settings.max_message_bytes
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                link.gone(message.get("code", 1005))
                return
            self.last_message = self.loop.time()
            text = message.get("text")
            if text is None:
                link.end(Close(1003, reason("binary-message", "send JSON in text messages")))
                return
            data = text.encode("utf-8")
            if len(data) > most:
                link.end(too_big(len(data), most))
                return
            try:
                obj = decode_payload(self.state, self.backend, parse_json(data))
            except ConnbridgeError as exc:  # MalformedJSON, PayloadError, InvalidPayload
                link.end(Close(1007, problem_reason(exc)))
                return
            try:
                await conn.send(obj)
            except ConnbridgeError as exc:
                link.end(self._backend_failed(exc))
                return

    async def downstream(self) -> None:
        """Backend to client: every object, as one text message of its JSON encoding."""
        link, conn, put = self.link, self.conn, self.link.outbox.put
        max_depth, max_bytes = self.state.result_max_depth, self.state.max_result_bytes
        while True:
            try:
                obj = await conn.recv()
                text = orjson.dumps(
                    to_json(
                        obj, format=self.result_format, max_depth=max_depth, max_bytes=max_bytes
                    )
                ).decode("utf-8")
            except ConnbridgeError as exc:
                link.end(self._backend_failed(exc))
                return
            self.last_message = self.loop.time()
            await put(text)

    async def watch_idle(self) -> None:
        """End the session after ``session_idle_timeout`` seconds without a message."""
        idle = self.link.settings.session_idle_timeout
        while True:
            left = self.last_message + idle - self.loop.time()
            if left <= 0:
                self.link.end(Close(1001, reason("idle-timeout", f"no message for {idle:g} s")))
                return
            await asyncio.sleep(left)

    def _backend_failed(self, exc: ConnbridgeError) -> Close:
        if isinstance(exc, ConnectionClosed):
            return Close(
                1011, reason("backend-connection-lost", "the backend closed the connection")
            )
        return Close(1011, problem_reason(exc))
