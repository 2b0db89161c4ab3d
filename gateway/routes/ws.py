"""``WS /ws`` (many calls on one socket) and ``WS /ws/session/{backend}`` (a bridged session).

``/ws`` carries call requests, each a text message ``{"id": <any JSON>,
"backend"?, "payload", "timeout"?, "result_format"?}``; each is run by
:func:`gateway.calls.run_call`, exactly as ``POST /compute`` runs it, and
answered with ``{"id", "result"}`` or ``{"id", "error": <problem>}`` (the
problem object of the REST API) as soon as it is done, in any order. A
message that cannot be read gets an error reply too, with its ``id`` when
one could be read, and the socket stays open.

``/ws/session/{backend}`` bridges the socket to a backend connection of its
own, opened by :meth:`~connbridge.pool.Pool.open_dedicated` outside the
pool's slots, so sessions cannot starve the calls. Each text message is one
JSON value, decoded by the codec and sent as is; every object the backend
sends is forwarded as one text message holding its JSON encoding, nothing
around it. Both directions run at once.

Flow control and memory
    A ``/ws`` socket has at most ``max_in_flight`` calls running; at the bound
    the gateway stops reading from the socket (uvicorn then stops reading from
    the TCP connection), so a fast client is slowed down, never refused.
    Outgoing messages wait in a queue of ``send_queue`` messages; a producer
    (a call, or a session's backend reader) waits for room, which in turn stops
    the reading of calls or of the backend. A client that reads nothing for
    ``send_timeout`` seconds while a message waits to be written is
    disconnected with 1008. Memory per socket is thus bounded by
    ``max_in_flight`` calls and ``send_queue`` messages, plus the transport's
    buffers.

Refusals and close codes
    A socket is accepted and then closed with a code, so that browsers, which
    see nothing of a refused HTTP handshake, get the code and the reason. Each
    reason starts with a slug (the problem type's for errors that have one)
    and is at most 123 bytes: ``"unauthorized: unknown API key"``.

    ====  ========================================================================
    1000  the client closed the socket (echoed)
    1001  ``idle-timeout``: a session without a message for ``session_idle_timeout``
    1003  ``binary-message``: a session takes JSON in text messages only
    1007  ``malformed-json``, ``invalid-payload``: a session message that is not
          JSON, or that the codec or the backend's ``payload_schema`` refuses
    1008  ``unauthorized``, ``forbidden``, ``unknown-backend``, ``invalid-request``:
          refused before any backend traffic; ``slow-client``: the client stopped
          reading
    1009  ``message-too-big``: a message over ``max_message_bytes`` (also sent by
          the server's protocol layer, before the message is read)
    1011  a session's backend failed: ``backend-connection-lost`` (it closed the
          connection or died), ``refused-pickle``, ``backend-protocol-error``
          (a frame too large, a corrupt header), ``unconvertible-result``;
          ``internal-error``
    1012  the gateway is restarting (sent by uvicorn at shutdown)
    1013  try again later: ``too-many-sessions`` for the backend; or the session's
          connection cannot be opened (the errors that are 503 in the REST API):
          ``backend-unreachable``, ``backend-authentication-failed``,
          ``overloaded``, ``shutting-down``
    ====  ========================================================================

Keepalive pings, and the message size limit at the protocol level, belong to
the server: :func:`gateway.cli.uvicorn_options` gives uvicorn's options for
the ``[websocket]`` settings.

Credentials: the API key comes from the ``Authorization`` header or, for
browsers, from an ``access_token`` query parameter. The access-log
middleware (:mod:`gateway.log`) takes the parameter out of the scope before
routing, so no log line (uvicorn's ``"WebSocket /ws" [accepted]``, or its 403
for an unknown path) can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from connbridge.codec import ResultFormat, to_json
from connbridge.connection import Connection
from connbridge.errors import ConnbridgeError, ConnectionClosed

from ..auth import Principal
from ..body import parse_json
from ..calls import decode_payload, parse_call, run_call
from ..context import request_context
from ..log import log_access
from ..problems import INTERNAL_ERROR, GatewayError, InvalidRequest, describe, problem_object
from ..state import Backend, GatewayState

__all__ = [
    "CALLS_ROUTE",
    "SESSION_ROUTE",
    "WebSocketHub",
    "install",
    "websocket_hub",
]

logger = logging.getLogger("connbridge.gateway")

#: The route templates (also the ``endpoint`` label of ``connbridge_websocket_connections``).
CALLS_ROUTE: Final = "/ws"
SESSION_ROUTE: Final = "/ws/session/{backend}"

#: RFC 6455 allows 125 bytes of close payload, two of which are the code.
_MAX_REASON: Final = 123
_FORMATS: Final = ("json", "tagged")
_MISSING: Final = object()


def _reason(slug: str, detail: str) -> str:
    """``"slug: detail"`` cut to the 123 bytes a close frame can carry."""
    text = f"{slug}: {detail}"
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON:
        return text
    return data[: _MAX_REASON - 3].decode("utf-8", "ignore") + "..."


def _problem_reason(exc: BaseException) -> str:
    row, detail, _, _ = describe(exc)
    return _reason(row.slug, detail)


def _dumps(message: dict[str, Any]) -> str:
    try:
        return orjson.dumps(message).decode("utf-8")
    except orjson.JSONEncodeError:
        # An ``id`` holding an integer beyond 64 bits (the parser keeps those
        # exact); results never do, the codec tags them.
        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Close:
    """How a socket ends: the close frame to send, after the queued messages or at once."""

    code: int
    reason: str
    #: Send what is queued first (False: the client does not read; do not wait for it).
    flush: bool = True


class _SlowClient(Exception):
    """Nothing could be written to the client for ``send_timeout`` seconds."""


# -- the writing side ---------------------------------------------------------------------


class _Outbox:
    """The bounded queue of one socket's outgoing text messages, and its writer.

    Producers wait in :meth:`put` while the queue is full. :meth:`run` writes
    the messages in order; uvicorn's ``send`` waits while the transport's
    buffer is over its high-water mark, i.e. while the client does not read,
    and :meth:`watch` ends the socket when one write has waited longer than
    ``timeout``.
    """

    def __init__(self, websocket: WebSocket, limit: int, timeout: float) -> None:
        self._websocket = websocket
        self._limit = limit
        self._timeout = timeout
        self._items: deque[str] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._final: _Close | None = None
        self._loop = asyncio.get_running_loop()
        #: Loop time at which the write in progress started; None between writes.
        self._writing_since: float | None = None

    async def put(self, text: str) -> None:
        """Queue one message, waiting for room."""
        while len(self._items) >= self._limit:
            self._room.clear()
            await self._room.wait()
        self._items.append(text)
        if not self._ready.is_set():
            self._ready.set()

    def finish(self, close: _Close) -> None:
        """Send ``close`` once every queued message is written; :meth:`run` then returns."""
        self._final = close
        self._ready.set()

    async def run(self) -> None:
        """Write the queued messages until :meth:`finish`.

        Raises:
            WebSocketDisconnect: the client is gone.
        """
        items, loop, send = self._items, self._loop, self._websocket.send
        while True:
            while items:
                text = items.popleft()
                if not self._room.is_set() and len(items) < self._limit:
                    self._room.set()
                self._writing_since = loop.time()
                await send({"type": "websocket.send", "text": text})
                self._writing_since = None
            final = self._final
            if final is not None:
                self._writing_since = loop.time()
                await self._websocket.close(final.code, final.reason)
                self._writing_since = None
                return
            self._ready.clear()
            await self._ready.wait()

    async def watch(self) -> None:
        """Raise :class:`_SlowClient` once a single write has waited ``timeout`` seconds.

        Wakes once per ``timeout`` at most, so the writes themselves carry no timer.
        """
        timeout, loop = self._timeout, self._loop
        while True:
            since = self._writing_since
            now = loop.time()
            if since is not None and now - since >= timeout:
                raise _SlowClient
            await asyncio.sleep(timeout if since is None else since + timeout - now)


# -- one accepted socket --------------------------------------------------------------------


class _Link:
    """One accepted socket: its outbox, the tasks that serve it, and how it ends.

    :meth:`serve` runs the workers and the writer until the first of them
    decides how the socket ends (:meth:`end`), then stops the others and
    sends the close frame (after the queued messages, unless the client is
    not reading them).
    """

    def __init__(self, hub: WebSocketHub, websocket: WebSocket, endpoint: str) -> None:
        settings = hub.settings
        self.hub = hub
        self.websocket = websocket
        self.endpoint = endpoint
        self.outbox = _Outbox(websocket, settings.send_queue, settings.send_timeout)
        self._ending: asyncio.Future[_Close | None] = asyncio.get_running_loop().create_future()
        context = request_context(websocket.scope)
        self.request_id = context.request_id if context is not None else None
        #: The code of the client's close frame, once it is gone.
        self.client_code = 1006

    def end(self, close: _Close | None) -> None:
        """Decide how the socket ends (``None``: the client is gone); the first decision wins."""
        if not self._ending.done():
            self._ending.set_result(close)

    def gone(self, code: int) -> None:
        """The client closed the socket with ``code``, or went without a close frame (1006)."""
        if not self._ending.done():
            self.client_code = code
            self._ending.set_result(None)

    async def _guard(self, work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except _SlowClient:
            timeout = self.hub.settings.send_timeout
            self.end(
                _Close(
                    1008,
                    _reason("slow-client", f"nothing could be sent for {timeout:g} s"),
                    flush=False,
                )
            )
        except WebSocketDisconnect as exc:
            self.gone(exc.code)
        except Exception:
            logger.exception(
                "websocket %s (request id %s): %s failed", self.endpoint, self.request_id, what
            )
            self.end(_Close(1011, _reason("internal-error", "see the gateway log")))

    async def serve(self, *workers: tuple[str, Coroutine[Any, Any, None]]) -> _Close | None:
        """Run ``workers`` with the writer until the socket ends; returns how it ended."""
        outbox = self.outbox
        writer = asyncio.create_task(self._guard(outbox.run(), "writer"))
        tasks = [asyncio.create_task(self._guard(outbox.watch(), "send watchdog"))]
        tasks += [asyncio.create_task(self._guard(work, what)) for what, work in workers]
        try:
            ending = await self._ending
        except BaseException:
            # The handler itself is cancelled (server shutdown): stop everything.
            for task in (*tasks, writer):
                task.cancel()
            await asyncio.gather(*tasks, writer, return_exceptions=True)
            raise
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.hub.closes[ending.code if ending is not None else self.client_code] += 1
        if ending is None:
            writer.cancel()
        elif ending.flush:
            # The writer sends what is queued, then the close frame; the
            # watchdog is gone, so the wait is bounded here.
            outbox.finish(ending)
            done, _ = await asyncio.wait({writer}, timeout=self.hub.settings.send_timeout)
            if not done:
                writer.cancel()
        else:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self._close_now(ending)
        await asyncio.gather(writer, return_exceptions=True)
        return ending

    async def _close_now(self, close: _Close) -> None:
        # The client does not read: the close frame may never get out.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.hub.settings.send_timeout):
                await self.websocket.close(close.code, close.reason)


# -- /ws --------------------------------------------------------------------------------------


class _Calls:
    """The calls of one ``/ws`` socket."""

    def __init__(self, link: _Link, principal: Principal) -> None:
        self.link = link
        self.hub = link.hub
        self.state = link.hub.state
        self.principal = principal
        self.in_flight = 0
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # asyncio.create_task() looks the loop up, a getpid() call on 3.11.
        self._loop = asyncio.get_running_loop()

    async def read(self) -> None:
        """Read call requests until the client goes, with at most ``max_in_flight`` running."""
        websocket, link = self.link.websocket, self.link
        limit = self.hub.settings.max_in_flight
        most = self.hub.settings.max_message_bytes
        try:
            while True:
                if self.in_flight >= limit:
                    # Backpressure: no receive() until a call is done, so uvicorn
                    # stops reading the TCP connection and the client's sends wait.
                    self._room.clear()
                    await self._room.wait()
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    link.gone(message.get("code", 1005))
                    return
                text = message.get("text")
                if text is None:
                    error = InvalidRequest(
                        "send each call as a text message holding a JSON object",
                        [{"detail": "binary messages are not supported", "pointer": "#"}],
                    )
                    await link.outbox.put(self._error(None, error, None)[0])
                    continue
                data = text.encode("utf-8")
                if len(data) > most:
                    link.end(_too_big(len(data), most))
                    return
                self._start(data)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self, data: bytes) -> None:
        self.in_flight += 1
        self.hub.note_in_flight(self.in_flight)
        task = self._loop.create_task(self._call(data))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            self.link.end(_Close(1011, _reason("internal-error", "see the gateway log")))
            logger.error("websocket call failed", exc_info=task.exception())

    async def _call(self, data: bytes) -> None:
        ident: Any = None
        backend: Backend | None = None
        started = time.perf_counter()
        try:
            body = parse_json(data)
            if type(body) is dict:
                ident = body.pop("id", _MISSING)
                if ident is _MISSING:
                    ident = None
                    raise InvalidRequest(
                        "a call needs an 'id', echoed in its reply",
                        [{"detail": "'id' is required", "pointer": "#/id"}],
                    )
            call = parse_call(body)
            backend = self.state.backend_for(self.principal, call.backend)
            answer = await run_call(self.state, backend, call)
            reply = _dumps({"id": ident, "result": answer["result"]})
            status = 200
        except Exception as exc:
            reply, status = self._error(ident, exc, backend)
        self.state.metrics.observe_request(
            CALLS_ROUTE,
            backend.name if backend is not None else "",
            status,
            time.perf_counter() - started,
        )
        await self.link.outbox.put(reply)

    def _error(self, ident: Any, exc: Exception, backend: Backend | None) -> tuple[str, int]:
        """The error reply for ``exc`` (the problem object of the REST API), and its status."""
        row, problem, _ = problem_object(
            exc,
            instance=CALLS_ROUTE,
            request_id=self.link.request_id,
            backend=backend.name if backend is not None else None,
        )
        if row is INTERNAL_ERROR:
            logger.error(
                "websocket call failed (request id %s)", self.link.request_id, exc_info=exc
            )
        return _dumps({"id": ident, "error": problem}), row.status


# -- /ws/session/{backend} --------------------------------------------------------------------


class _Session:
    """Both directions of one bridged session, and its idle timer."""

    def __init__(
        self, link: _Link, backend: Backend, conn: Connection, result_format: ResultFormat
    ) -> None:
        self.link = link
        self.state = link.hub.state
        self.backend = backend
        self.conn = conn
        self.result_format = result_format
        self.loop = asyncio.get_running_loop()
        self.last_message = self.loop.time()

    async def upstream(self) -> None:
        """Client to backend: each text message is decoded and sent as one object."""
        websocket, link, conn = self.link.websocket, self.link, self.conn
        most = link.hub.settings.max_message_bytes
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                link.gone(message.get("code", 1005))
                return
            self.last_message = self.loop.time()
            text = message.get("text")
            if text is None:
                link.end(_Close(1003, _reason("binary-message", "send JSON in text messages")))
                return
            data = text.encode("utf-8")
            if len(data) > most:
                link.end(_too_big(len(data), most))
                return
            try:
                obj = decode_payload(self.state, self.backend, parse_json(data))
            except ConnbridgeError as exc:  # MalformedJSON, PayloadError, InvalidPayload
                link.end(_Close(1007, _problem_reason(exc)))
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
        idle = self.link.hub.settings.session_idle_timeout
        while True:
            left = self.last_message + idle - self.loop.time()
            if left <= 0:
                self.link.end(_Close(1001, _reason("idle-timeout", f"no message for {idle:g} s")))
                return
            await asyncio.sleep(left)

    def _backend_failed(self, exc: ConnbridgeError) -> _Close:
        if isinstance(exc, ConnectionClosed):
            return _Close(
                1011, _reason("backend-connection-lost", "the backend closed the connection")
            )
        return _Close(1011, _problem_reason(exc))


def _too_big(size: int, most: int) -> _Close:
    return _Close(1009, _reason("message-too-big", f"{size} bytes; the limit is {most}"))


# -- the hub ------------------------------------------------------------------------------------


class WebSocketHub:
    """The WebSocket side of one app: limits, open sockets and sessions, statistics."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.settings = state.settings.websocket
        self._gauge = state.metrics.websocket_connections
        #: Open sockets by route template.
        self.sockets: Counter[str] = Counter()
        #: Open sessions by backend.
        self.sessions: Counter[str] = Counter()
        #: Sockets ended, by close code (1006: the client went without one).
        self.closes: Counter[int] = Counter()
        #: The most calls seen in flight on one ``/ws`` socket.
        self.in_flight_peak = 0

    def note_in_flight(self, count: int) -> None:
        if count > self.in_flight_peak:
            self.in_flight_peak = count

    def stats(self) -> dict[str, Any]:
        """JSON-able statistics."""
        return {
            "sockets": dict(self.sockets),
            "sessions": dict(self.sessions),
            "closes": {str(code): n for code, n in sorted(self.closes.items())},
            "in_flight_peak": self.in_flight_peak,
        }

    # admission

    def _authenticate(self, websocket: WebSocket) -> Principal:
        context = request_context(websocket.scope)
        token = None if context is None else context.access_token
        return self.state.keys.authenticate(
            websocket.headers.get("authorization"), access_token=token
        )

    async def _refuse(self, websocket: WebSocket, code: int, reason: str) -> None:
        # Accepted, then closed: a browser sees the code and the reason, where a
        # refused handshake would only show it an error with code 1006.
        self.closes[code] += 1
        with contextlib.suppress(WebSocketDisconnect, OSError):
            await websocket.accept()
            await websocket.close(code, reason)

    def _opened(self, endpoint: str) -> None:
        self.sockets[endpoint] += 1
        self._gauge.labels(endpoint).inc()

    def _closed(self, endpoint: str, started: float, link: _Link, ending: _Close | None) -> None:
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
        except GatewayError as exc:
            await self._refuse(websocket, 1008, _problem_reason(exc))
            return
        started = time.perf_counter()
        await websocket.accept()
        self._opened(CALLS_ROUTE)
        link = _Link(self, websocket, CALLS_ROUTE)
        ending = None
        try:
            calls = _Calls(link, principal)
            ending = await link.serve(("reader", calls.read()))
        finally:
            self._closed(CALLS_ROUTE, started, link, ending)

    async def serve_session(self, websocket: WebSocket) -> None:
        """``WS /ws/session/{backend}``."""
        name: str = websocket.path_params["backend"]
        try:
            principal = self._authenticate(websocket)
            backend = self.state.backend_for(principal, name, at=None)
        except GatewayError as exc:
            await self._refuse(websocket, 1008, _problem_reason(exc))
            return
        asked = websocket.query_params.get("result_format", "json")
        if asked not in _FORMATS:
            reason = _reason("invalid-request", "result_format must be 'json' or 'tagged'")
            await self._refuse(websocket, 1008, reason)
            return
        result_format: ResultFormat = "tagged" if asked == "tagged" else "json"
        most = self.settings.max_sessions_per_backend
        if self.sessions[name] >= most:
            reason = _reason("too-many-sessions", f"backend {name!r} has {most} sessions open")
            await self._refuse(websocket, 1013, reason)
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
        link = _Link(self, websocket, SESSION_ROUTE)
        ending: _Close | None = None
        try:
            try:
                conn = await backend.running_pool().open_dedicated()
            except ConnbridgeError as exc:
                row = describe(exc)[0]
                ending = _Close(1013 if row.status == 503 else 1011, _problem_reason(exc))
                self.closes[ending.code] += 1
                with contextlib.suppress(WebSocketDisconnect):
                    await websocket.close(ending.code, ending.reason)
                return
            try:
                session = _Session(link, backend, conn, result_format)
                ending = await link.serve(
                    ("client reader", session.upstream()),
                    ("backend reader", session.downstream()),
                    ("idle timer", session.watch_idle()),
                )
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
