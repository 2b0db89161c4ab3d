"""``POST /stream``, ``POST /backends/{name}/stream`` and ``GET /backends/{name}/stream``.

The payload is sent once and every reply the backend sends is written as it
comes, as NDJSON (``Accept: application/x-ndjson``, the default) or as
Server-Sent Events (``Accept: text/event-stream``); the item shapes and
their framing are in :mod:`gateway.streams`. ``GET`` is for the browser's
``EventSource``, which can neither POST nor set headers: the request is in
the query string and the API key may come as ``access_token`` (taken out of
the scope before routing, as for WebSockets; see :mod:`gateway.log`).

When a stream ends
    At the first of these (``[backends.NAME] stream_end`` picks the
    backend's own rule; the request's ``replies`` and ``idle_timeout`` can
    only end it sooner):

    * ``sentinel`` (``stream_end = "sentinel"``): a reply equal to
      ``stream_sentinel``; the sentinel itself is not written. Provable.
    * ``count``: the request's ``replies`` were written (required when
      ``stream_end = "count"``). Provable.
    * ``closed``: the backend closed its connection after at least one
      reply, where that is how its streams end: ``stream_end = "closed"``,
      or ``"idle"`` when the request asked for no count. Where a sentinel or
      a count was still awaited, it is an error (``backend-connection-lost``).
    * ``idle``: no reply for ``stream_idle_timeout`` seconds after the last
      one (not with ``stream_end = "closed"``, unless the request gives
      ``idle_timeout``).
    * the overall ``call_timeout`` (or the request's ``timeout``, or its
      ``Request-Timeout`` header, the smallest of them): an error,
      ``backend-timeout``.

    After a provable end the connection goes back to the pool; after any
    other the pool closes it gently (:meth:`connbridge.pool.Pool.stream`).

Errors
    Until the first reply has come, nothing is written: an error is an
    ordinary problem response with its status (the first reply is awaited
    before the response starts). After that, an error is the stream's last
    item, ``{"error": <problem>}`` (SSE: ``event: error``), and a complete
    stream ends with ``{"end": {"reason": ...}}`` (SSE: ``event: end``):
    a client can always tell a complete stream from a broken one. More than
    ``max_replies`` replies with no end in sight is the error
    ``too-many-replies``; more than ``max_streams`` streams open on the
    backend is 503 ``too-many-streams``.

Backpressure
    Nothing is read ahead: the next reply is read only once the last one
    has been handed to the server, whose writes wait while the client's
    socket is full (uvicorn's flow control). A client that goes away cancels
    the response, and leaving the pool's block closes the connection.

An ``EventSource`` reconnects when a stream ends. A stream cannot be resumed
(the request would be sent again), so a ``GET`` with ``Last-Event-ID`` is
answered 204, which tells ``EventSource`` to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from connbridge.codec import to_json
from connbridge.errors import (
    BackendUnavailable,
    ConnbridgeError,
    ConnectionClosed,
    HandshakeError,
    StreamIdle,
)
from connbridge.streaming import ReplyStream

from ..auth import Principal
from ..body import read_json
from ..calls import decode_payload
from ..context import request_context, set_backend, set_route
from ..deadlines import effective_timeout, header_timeout
from ..deps import authenticate, gateway_state, header
from ..metrics import GatewayMetrics
from ..openapi import problem_responses, request_body, stream_responses, with_request_timeout
from ..problems import (
    BackendRaised,
    InvalidRequest,
    TooManyReplies,
    TooManyStreams,
    problem_object,
)
from ..state import Backend, GatewayState
from ..streams import Framing, StreamRequest, parse_stream, pick_framing, query_stream

__all__ = ["STREAM_ROUTE", "router"]

logger = logging.getLogger("connbridge.gateway")

STREAM_ROUTE: Final = "/backends/{name}/stream"
_ERRORS: Final = (400, 403, 404, 406, 413, 415, 422, 502, 503, 504)
_DESCRIPTIONS: Final = {
    406: "`Accept` names neither `application/x-ndjson` nor `text/event-stream`",
    422: "The request or its payload is invalid (schema, unknown tag, `replies` over "
    "`max_replies`, no `replies` for a backend whose streams end by count)",
    502: "Before the first reply: the backend answered with an exception, closed the "
    "connection, broke the protocol, or sent a reply that was refused or too large",
    503: "The backend is unreachable or overloaded, has `max_streams` streams open "
    "(`too-many-streams`), or the gateway is shutting down",
    504: "No first reply within the timeout",
}
_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: What ``Request-Timeout`` bounds on a stream.
_WHOLE: Final = "Bounds the whole stream, as `timeout` does."
#: What a stream whose response ended early is left with: the connection is closed.
_GONE: Final = ConnectionAbortedError("the client went away")


class _OpenStreams:
    """Streams open per backend, bounded by each backend's ``max_streams``, and their ends."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.open: Counter[str] = Counter()
        self._metrics = metrics

    def admit(self, backend: Backend) -> None:
        most = backend.settings.max_streams
        if self.open[backend.name] >= most:
            raise TooManyStreams(
                f"backend {backend.name!r} has {most} streams open (max_streams)",
                headers={"Retry-After": "1"},
            )
        self.open[backend.name] += 1
        self._metrics.streams.labels(backend.name).inc()

    def release(self, backend: Backend, reason: str | None = None) -> None:
        """One stream is over (``reason``: how it ended, once it had started)."""
        self.open[backend.name] -= 1
        self._metrics.streams.labels(backend.name).dec()
        if reason is not None:
            self._metrics.stream_ends.labels(backend.name, reason).inc()


class _Run:
    """One stream in progress: the pool's block and the slot, each let go exactly once."""

    __slots__ = ("_block", "_release", "done")

    def __init__(
        self, block: AbstractAsyncContextManager[ReplyStream], release: Callable[[str], None]
    ) -> None:
        self._block = block
        self._release = release
        self.done = False

    async def close(self, reason: str, exc: BaseException | None = None) -> None:
        """Leave the pool's block (with ``exc``, if the stream broke); count the end."""
        if self.done:
            return
        self.done = True
        try:
            if exc is None:
                await self._block.__aexit__(None, None, None)
            else:
                await self._block.__aexit__(type(exc), exc, exc.__traceback__)
        finally:
            self._release(reason)


class _StreamResponse(StreamingResponse):
    """A streaming response that lets go of its stream even if its body never ran."""

    def __init__(self, body: AsyncIterator[bytes], framing: Framing, run: _Run) -> None:
        super().__init__(body, media_type=framing.media_type, headers=_HEADERS)
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The client went before the body started or finished: its
            # generator may never run its own cleanup.
            await self._run.close("gone", _GONE)


class _Stream:
    """The replies of one stream turned into items, with the end rules of its backend."""

    def __init__(
        self, state: GatewayState, backend: Backend, request: StreamRequest, replies: ReplyStream
    ) -> None:
        settings = backend.settings
        self.state = state
        self.backend = backend
        self.replies = replies
        self.format = request.call.result_format
        self.count = request.replies
        self.most = settings.max_replies if request.replies is None else request.replies
        self.sentinel_mode = settings.stream_end == "sentinel"
        self.sentinel = settings.sentinel
        idle = None if settings.stream_end == "closed" else settings.stream_idle_timeout
        if request.idle_timeout is not None and (idle is None or request.idle_timeout < idle):
            idle = request.idle_timeout
        self.idle = idle
        # An end by EOF is complete only where no sentinel or count is awaited.
        self.closed_ends = settings.stream_end in ("idle", "closed") and self.count is None

    def is_sentinel(self, reply: object) -> bool:
        sentinel = self.sentinel
        return self.sentinel_mode and type(reply) is type(sentinel) and reply == sentinel

    def item(self, reply: object) -> object:
        """The JSON of one reply; raises BackendRaised for an exception, ResultError."""
        state = self.state
        if isinstance(reply, BaseException):
            raise BackendRaised(
                reply,
                result_format=self.format,
                max_depth=state.result_max_depth,
                max_bytes=state.max_result_bytes,
            )
        return to_json(
            reply,
            format=self.format,
            max_depth=state.result_max_depth,
            max_bytes=state.max_result_bytes,
        )


def _authenticate(request: Request, state: GatewayState, *, query: bool) -> Principal:
    if not query or not state.keys.enabled:
        return authenticate(request, state)
    context = request_context(request.scope)
    return state.keys.authenticate(
        header(request.scope, b"authorization"),
        access_token=None if context is None else context.access_token,
    )


def _check_limits(backend: Backend, stream: StreamRequest, *, query: bool) -> None:
    settings = backend.settings
    where = {"parameter": "replies", "in": "query"} if query else {"pointer": "#/replies"}
    if stream.replies is not None and stream.replies > settings.max_replies:
        detail = f"at most {settings.max_replies} (the backend's max_replies)"
        raise InvalidRequest(f"replies: {detail}", [{"detail": detail, **where}])
    if stream.replies is None and settings.stream_end == "count":
        detail = f"required: the streams of backend {backend.name!r} end by count"
        raise InvalidRequest(f"replies is {detail}", [{"detail": detail, **where}])


async def _open(request: Request, name: str | None, *, query: bool) -> Response:
    state = gateway_state(request.app)
    scope = request.scope
    caller = _authenticate(request, state, query=query)
    if query and header(scope, b"last-event-id") is not None:
        return Response(status_code=204)  # an EventSource reconnecting: nothing to resume
    framing = pick_framing(header(scope, b"accept"))
    request_timeout = header_timeout(scope)
    gateway = state.settings.gateway
    limit = gateway.max_body_bytes
    if query:
        stream = query_stream(scope["query_string"], max_bytes=limit)
    else:
        stream = parse_stream(await read_json(request, limit, gateway.body_timeout))
    call = stream.call
    if name is not None:
        if call.backend is not None and call.backend != name:
            raise InvalidRequest(
                f"the path names backend {name!r} but the request names {call.backend!r}",
                [{"detail": "must match the backend in the path", "pointer": "#/backend"}],
            )
        call.backend = name
    backend = state.backend_for(caller, call.backend, at=None if name is not None else ())
    set_backend(scope, backend.name)
    _check_limits(backend, stream, query=query)
    obj = decode_payload(state, backend, call.payload, at=("payload",))
    timeout = effective_timeout(backend, call.timeout, request_timeout)
    streams: _OpenStreams = request.app.state.open_streams
    streams.admit(backend)
    block = backend.running_pool().stream(
        obj, timeout=timeout, max_reply_bytes=backend.settings.max_reply_bytes
    )
    try:
        replies = await block.__aenter__()
    except BackendUnavailable as exc:
        streams.release(backend)
        if exc.handshake_failed:
            raise HandshakeError(str(exc)) from exc
        raise
    except BaseException:
        streams.release(backend)
        raise
    run = _Run(block, lambda reason: streams.release(backend, reason))
    shaped = _Stream(state, backend, stream, replies)
    try:
        first = await replies.next()
        if shaped.is_sentinel(first):
            replies.finish()
            await run.close("sentinel")
            return Response(framing.end("sentinel"), media_type=framing.media_type)
        item = shaped.item(first)
    except BaseException as exc:
        await run.close("error", exc)
        raise
    return _StreamResponse(_items(scope, shaped, framing, run, item), framing, run)


async def _items(
    scope: Scope, shaped: _Stream, framing: Framing, run: _Run, first: object
) -> AsyncIterator[bytes]:
    """The items of one stream; the first reply has come (as ``first``)."""
    replies = shaped.replies
    failure: Exception | None = None
    last: bytes | None = None
    reason = "error"
    heartbeat = shaped.backend.settings.stream_heartbeat_interval
    try:
        yield framing.result(0, first)
        seq = 1
        while last is None:
            if shaped.count is not None and seq >= shaped.count:
                replies.finish()
                reason = "count"
                last = framing.end(reason)
                break
            if seq >= shaped.most:
                raise TooManyReplies(
                    f"the stream reached max_replies ({shaped.most}) with no end; "
                    "more replies may have followed"
                )
            try:
                if framing.sse:
                    # Comments while the backend is silent, so proxies keep the stream.
                    pending = asyncio.ensure_future(replies.next(shaped.idle))
                    try:
                        while not pending.done():
                            await asyncio.wait((pending,), timeout=heartbeat)
                            if not pending.done():
                                yield framing.heartbeat()
                    finally:
                        if not pending.cancel():
                            pending.exception()  # retrieved: never logged as lost
                    reply = pending.result()
                else:
                    reply = await replies.next(shaped.idle)
            except StreamIdle:
                reason = "idle"
                last = framing.end(reason)
                break
            except ConnectionClosed:
                if not shaped.closed_ends:
                    raise
                reason = "closed"
                last = framing.end(reason)
                break
            if shaped.is_sentinel(reply):
                replies.finish()
                reason = "sentinel"
                last = framing.end(reason)
                break
            yield framing.result(seq, shaped.item(reply))
            seq += 1
    except Exception as exc:
        failure = exc
        if not isinstance(exc, ConnbridgeError):
            logger.error("stream on backend %s failed", shaped.backend.name, exc_info=exc)
        context = request_context(scope)
        _, problem, _ = problem_object(
            exc,
            instance=scope.get("path"),
            request_id=context.request_id if context is not None else None,
            backend=shaped.backend.name,
        )
        last = framing.error(problem)
    except BaseException as exc:
        await run.close("gone", exc)  # cancelled: the client went away
        raise
    # The connection is let go before the last item is written: a client
    # that has read it finds the pool as it left it.
    await run.close(reason, failure)
    yield last


def _endpoint(*, query: bool) -> Callable[..., Coroutine[Any, Any, Response]]:
    async def stream_on_backend(request: Request, name: str) -> Response:
        set_route(request.scope, STREAM_ROUTE)
        return await _open(request, name, query=query)

    return stream_on_backend


_QUERY_PARAMETERS: Final = [
    {
        "name": "payload",
        "in": "query",
        "required": True,
        "description": "The payload as JSON text (URL-encoded), as in the body of `POST`.",
        # A parameter serialized as JSON: generators and fuzzers send JSON text.
        "content": {
            "application/json": {
                "schema": {},
                "example": {"op": "stream", "count": 3, "value": "hi"},
            }
        },
    },
    *(
        {"name": key, "in": "query", "required": False, "description": text, "schema": schema}
        for key, text, schema in (
            ("replies", "End after this many replies.", {"type": "integer", "minimum": 1}),
            ("idle_timeout", "Seconds of silence that end the stream.", {"type": "number"}),
            ("timeout", "Seconds for the whole stream.", {"type": "number"}),
            ("result_format", "`json` or `tagged`.", {"enum": ["json", "tagged"]}),
            (
                "access_token",
                "The API key, for `EventSource` (which cannot set headers); "
                "prefer `Authorization: Bearer`. Never logged.",
                {"type": "string"},
            ),
        )
    ),
]


def router(state: GatewayState) -> APIRouter:
    """The stream routes (the count of open streams lives on the app, see :func:`install`)."""
    api = APIRouter(tags=["stream"])
    example = {"payload": {"op": "stream", "count": 3, "value": "hi"}, "replies": 3}
    responses = {**stream_responses(), **problem_responses(_ERRORS, _DESCRIPTIONS)}
    described = (
        "Send `payload` once and write every reply as it comes: NDJSON "
        '(`Accept: application/x-ndjson`, the default), one `{"result"}` per line, or '
        "Server-Sent Events (`Accept: text/event-stream`). The last item is "
        '`{"end": {"reason"}}` for a complete stream or `{"error": <problem>}`.'
    )

    @api.post(
        "/stream",
        operation_id="stream",
        summary="Stream a backend's replies",
        description=described + " The backend is the default one unless `backend` names another.",
        responses=responses,
        response_class=StreamingResponse,
        openapi_extra=with_request_timeout(request_body("StreamRequest", example), _WHOLE),
    )
    async def stream(request: Request) -> Response:
        return await _open(request, None, query=False)

    api.add_api_route(
        STREAM_ROUTE,
        _endpoint(query=False),
        methods=["POST"],
        operation_id="stream_on_backend",
        summary="Stream a named backend's replies",
        description=described,
        responses=responses,
        response_class=StreamingResponse,
        openapi_extra=with_request_timeout(request_body("StreamRequest", example), _WHOLE),
    )
    api.add_api_route(
        STREAM_ROUTE,
        _endpoint(query=True),
        methods=["GET"],
        operation_id="stream_on_backend_get",
        summary="Stream a named backend's replies (EventSource)",
        description=described
        + " For the browser's `EventSource`: the request is in the query string, and a "
        "reconnection (`Last-Event-ID`) is answered 204, which stops it.",
        responses={**responses, 204: {"description": "A reconnecting `EventSource`: stop."}},
        response_class=StreamingResponse,
        openapi_extra=with_request_timeout({"parameters": _QUERY_PARAMETERS}, _WHOLE),
    )
    return api


def install(app: Any, state: GatewayState) -> None:
    """Add the stream routes to ``app``, with its count of open streams."""
    app.state.open_streams = _OpenStreams(state.metrics)
    app.include_router(router(state))
