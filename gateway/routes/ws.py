"""``WS /ws`` (many calls on one socket) and ``WS /ws/session/{backend}`` (a bridged session).

The routes, their admission (the API key, the backend, the session cap) and
the counters of open sockets live here; the protocols are
:mod:`gateway.websocket.calls` (``/ws``) and :mod:`gateway.websocket.session`
(``/ws/session/{backend}``), both run on the plumbing of
:mod:`gateway.websocket.link` (a bounded outbox, the tasks of one socket).

Memory per socket is bounded by ``max_in_flight`` calls and ``send_queue``
outgoing messages, plus the transport's buffers.

Refusals and close codes
    A socket is accepted and then closed with a code, so that browsers, which
    see nothing of a refused HTTP handshake, get the code and the reason. Each
    reason starts with a slug (the problem type's for errors that have one)
    and is at most 123 bytes: ``"unauthorized: unknown API key"``.

    ====  ========================================================================
    1000  the client closed the socket (echoed)
    1001  ``idle-timeout``: a session without a message for ``session_idle_timeout``;
          ``shutting-down``: ``/ws`` after a drain, once its calls are answered
    1003  ``binary-message``: a session takes JSON in text messages only
    1007  ``malformed-json``, ``invalid-payload``: a session message that is not
          JSON, or that the codec or the backend's ``payload_schema`` refuses
    1008  ``unauthorized``, ``forbidden``, ``unknown-backend``, ``invalid-request``,
          ``wrong-backend-kind`` (a session to a manager backend),
          ``invalid-request-timeout`` (``/ws`` upgraded with a bad ``Request-Timeout``):
          refused before any backend traffic; ``slow-client``: the client stopped
          reading
    1009  ``message-too-big``: a message over ``max_message_bytes`` (also sent by
          the server's protocol layer, before the message is read)
    1011  a session's backend failed: ``backend-connection-lost`` (it closed the
          connection or died), ``refused-pickle``, ``backend-protocol-error``
          (a frame too large, a corrupt header), ``unconvertible-result``;
          ``internal-error``
    1012  ``shutting-down``: a session when the gateway drains (with no reason
          when the server is not the gateway's own, which closes at once)
    1013  try again later: ``too-many-sessions`` for the backend; or the session's
          connection cannot be opened (the errors that are 503 in the REST API):
          ``backend-unreachable``, ``backend-authentication-failed``,
          ``overloaded``, ``shutting-down``
    ====  ========================================================================

Keepalive pings, and the message size limit at the protocol level, belong to
the server: :func:`gateway.cli.uvicorn_options` gives uvicorn's options for
the ``[websocket]`` settings.

Deadlines: a ``Request-Timeout`` header on the ``/ws`` upgrade bounds every
call made on the socket, as the header bounds one REST call (each call's
``timeout`` can shorten it further); it is no limit on the socket's life. A
session (``/ws/session/{backend}``) ignores it: its messages are not calls,
nothing pairs a reply with a request, so there is no call to put a deadline
on, and how long a session lives is ``session_idle_timeout``'s business.

Credentials: the API key comes from the ``Authorization`` header or, for
browsers, from an ``access_token`` query parameter. The access-log
middleware (:mod:`gateway.log`) takes the parameter out of the scope before
routing (:func:`gateway.auth.take_access_token`), so no log line (uvicorn's
``"WebSocket /ws" [accepted]``, or its 403 for an unknown path) can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from connbridge.codec import ResultFormat
from connbridge.errors import ConnbridgeError

from ..auth import Principal
from ..calls import RESULT_FORMATS
from ..context import request_context
from ..deadlines import header_timeout
from ..log import log_access
from ..problems import GatewayError, describe
from ..state import Backend, GatewayState
from ..websocket.calls import CALLS_ROUTE, Calls
from ..websocket.link import Close, Link, Worker, problem_reason, reason
from ..websocket.session import SESSION_ROUTE, Session

__all__ = [
    "CALLS_ROUTE",
    "SESSION_DRAINED",
    "SESSION_ROUTE",
    "WebSocketHub",
    "install",
    "websocket_hub",
]

#: The close of a session when the gateway drains: a session has no call to finish.
SESSION_DRAINED = Close(
    1012, reason("shutting-down", "the gateway is restarting; open a new session")
)


class WebSocketHub:
    """The WebSocket side of one app: limits, open sockets and sessions, statistics."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.settings = state.settings.websocket
        self._gauge = state.metrics.websocket_connections
        for endpoint in (CALLS_ROUTE, SESSION_ROUTE):
            self._gauge.labels(endpoint)  # exported at 0 before the first socket
        #: Open sockets by route template.
        self.sockets: Counter[str] = Counter()
        #: Open sessions by backend.
        self.sessions: Counter[str] = Counter()
        #: Sockets ended, by close code (1006: the client went without one).
        self.closes: Counter[int] = Counter()
        #: The most calls seen in flight on one ``/ws`` socket.
        self.in_flight_peak = 0

    def note_in_flight(self, count: int) -> None:
        """A ``/ws`` socket has ``count`` calls in flight (kept: the peak)."""
        if count > self.in_flight_peak:
            self.in_flight_peak = count

    # admission

    def _authenticate(self, websocket: WebSocket) -> Principal:
        context = request_context(websocket.scope)
        token = None if context is None else context.access_token
        return self.state.keys.authenticate(
            websocket.headers.get("authorization"), access_token=token
        )

    async def _refuse(self, websocket: WebSocket, code: int, why: str) -> None:
        # Accepted, then closed: a browser sees the code and the reason, where a
        # refused handshake would only show it an error with code 1006.
        self.closes[code] += 1
        with contextlib.suppress(WebSocketDisconnect, OSError):
            await websocket.accept()
            await websocket.close(code, why)

    def _opened(self, endpoint: str) -> None:
        self.sockets[endpoint] += 1
        self._gauge.labels(endpoint).inc()

    def _closed(self, endpoint: str, started: float, link: Link, ending: Close | None) -> None:
        self.sockets[endpoint] -= 1
        self._gauge.labels(endpoint).dec()
        log_access(
            link.request_id,
            "WEBSOCKET",
            link.websocket.scope["path"],
            endpoint,
            time.perf_counter() - started,
            close_code=ending.code if ending is not None else link.client_code,
        )

    # the endpoints

    async def serve_calls(self, websocket: WebSocket) -> None:
        """``WS /ws``."""
        try:
            principal = self._authenticate(websocket)
            request_timeout = header_timeout(websocket.scope)
        except GatewayError as exc:
            await self._refuse(websocket, 1008, problem_reason(exc))
            return
        started = time.perf_counter()
        await websocket.accept()
        self._opened(CALLS_ROUTE)
        link = Link(websocket, CALLS_ROUTE, self.settings, self.closes)
        ending = None
        try:
            calls = Calls(
                link, self.state, principal, self.note_in_flight, request_timeout=request_timeout
            )
            ending = await link.serve(("reader", calls.read()))
        finally:
            self._closed(CALLS_ROUTE, started, link, ending)

    async def serve_session(self, websocket: WebSocket) -> None:
        """``WS /ws/session/{backend}``."""
        name: str = websocket.path_params["backend"]
        try:
            principal = self._authenticate(websocket)
            backend = self.state.backend_for(principal, name, at=None)
            backend.refuse_payloads()  # a manager: no raw connection to it, ever
        except GatewayError as exc:
            await self._refuse(websocket, 1008, problem_reason(exc))
            return
        asked = websocket.query_params.get("result_format", "json")
        if asked not in RESULT_FORMATS:
            refusal = reason("invalid-request", "result_format must be 'json' or 'tagged'")
            await self._refuse(websocket, 1008, refusal)
            return
        result_format: ResultFormat = "tagged" if asked == "tagged" else "json"
        most = self.settings.max_sessions_per_backend
        if self.sessions[name] >= most:
            refusal = reason("too-many-sessions", f"backend {name!r} has {most} sessions open")
            await self._refuse(websocket, 1013, refusal)
            return
        self.sessions[name] += 1
        try:
            await self._session(websocket, backend, result_format)
        finally:
            self.sessions[name] -= 1
            if not self.sessions[name]:
                del self.sessions[name]

    async def _session(
        self, websocket: WebSocket, backend: Backend, result_format: ResultFormat
    ) -> None:
        started = time.perf_counter()
        await websocket.accept()
        self._opened(SESSION_ROUTE)
        link = Link(websocket, SESSION_ROUTE, self.settings, self.closes)
        ending: Close | None = None
        try:
            try:
                conn = await backend.running_pool().open_dedicated()
            except ConnbridgeError as exc:
                row = describe(exc)[0]
                ending = Close(1013 if row.status == 503 else 1011, problem_reason(exc))
                self.closes[ending.code] += 1
                with contextlib.suppress(WebSocketDisconnect):
                    await websocket.close(ending.code, ending.reason)
                return
            try:
                session = Session(link, self.state, backend, conn, result_format)
                workers: list[Worker] = [
                    ("client reader", session.upstream()),
                    ("backend reader", session.downstream()),
                    ("idle timer", session.watch_idle()),
                ]
                if link.drain is not None:
                    workers.append(("drain", link.close_on_drain(SESSION_DRAINED)))
                ending = await link.serve(*workers)
            finally:
                # The backend sees EOF; shielded so that a cancelled handler
                # still closes it.
                await asyncio.shield(conn.close())
        finally:
            self._closed(SESSION_ROUTE, started, link, ending)


def install(app: FastAPI, state: GatewayState) -> WebSocketHub:
    """Add ``/ws`` and ``/ws/session/{backend}`` to ``app``; the hub is ``app.state.websockets``."""
    hub = WebSocketHub(state)
    api = APIRouter()
    api.add_websocket_route(CALLS_ROUTE, hub.serve_calls, name="ws_calls")
    api.add_websocket_route(SESSION_ROUTE, hub.serve_session, name="ws_session")
    app.include_router(api)
    app.state.websockets = hub
    return hub


def websocket_hub(app: Starlette) -> WebSocketHub:
    """The :class:`WebSocketHub` that :func:`install` attached to ``app``.

    Raises:
        RuntimeError: the app has no WebSocket routes.
    """
    hub = getattr(app.state, "websockets", None)
    if not isinstance(hub, WebSocketHub):
        raise RuntimeError("this app has no WebSocket routes (see gateway.routes.ws.install)")
    return hub
