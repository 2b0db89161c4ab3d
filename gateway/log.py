"""Logging: one line per request, the request id, and a last-resort error handler.

:class:`AccessLogMiddleware` is a plain ASGI middleware (Starlette's
``BaseHTTPMiddleware`` runs the app in another task and costs far more per
request). For every HTTP request it:

* takes ``X-Request-ID`` from the request if it is sane (1-128 characters of
  ``A-Z a-z 0-9 . _ : @ / + = -``) or makes one, and returns it in the
  response's ``X-Request-ID`` header;
* logs one line with the request id, method, path (never the query string,
  which may carry an ``access_token``), backend, status and duration;
* records the request in the Prometheus metrics;
* answers an exception that escaped everything else with a bare 500
  problem, and logs the traceback; the client never sees it.

The module is named ``log`` rather than ``logging`` so that it never shadows
the standard library.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_plus

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

__all__ = [
    "ACCESS_LOGGER",
    "AccessLogMiddleware",
    "JSONFormatter",
    "RequestContext",
    "configure_logging",
    "request_context",
]

#: Logger of the per-request lines.
ACCESS_LOGGER: Final = "connbridge.gateway.access"

_CONTEXT_KEY: Final = "connbridge.context"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_UNMATCHED: Final = "<unmatched>"

logger = logging.getLogger("connbridge.gateway")
access_logger = logging.getLogger(ACCESS_LOGGER)


@dataclass(slots=True)
class RequestContext:
    """What the middleware and the routes share about one request (in its scope)."""

    request_id: str
    #: Route template for metrics; routes set it, otherwise the matched route's path.
    route: str | None = None
    #: Backend the request was for, once known.
    backend: str | None = None
    #: A WebSocket's ``access_token`` query parameter, taken out of the scope.
    access_token: str | None = field(default=None, repr=False)


def request_context(scope: Mapping[str, Any]) -> RequestContext | None:
    """The :class:`RequestContext` of a request, if the middleware runs."""
    context: RequestContext | None = scope.get(_CONTEXT_KEY)
    return context


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return _random_ids.next_id()


class _RandomIds:
    """Random 96-bit request ids, drawn from the kernel 256 at a time.

    One ``os.urandom`` call per request showed in profiles; a counter would
    tell clients how many requests the process has served. The buffer is
    dropped in a forked child, so workers never share ids.
    """

    _BATCH: Final = 256

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def next_id(self) -> str:
        at = self._at
        if at >= len(self._buffer):
            self._buffer, at = os.urandom(12 * self._BATCH), 0
        self._at = at + 12
        return self._buffer[at : at + 12].hex()

    def forget(self) -> None:
        self._buffer, self._at = b"", 0


_random_ids = _RandomIds()
os.register_at_fork(after_in_child=_random_ids.forget)


def _take_access_token(scope: Scope) -> str | None:
    """Remove ``access_token`` from the query string; return its (first) value.

    Done before routing, for every WebSocket, so that no log line (uvicorn
    logs the path with its query string when it accepts or refuses a socket,
    including one to an unknown path) and no route ever sees the key.
    """
    query: bytes = scope.get("query_string", b"")
    if b"access_token" not in query and b"%" not in query:
        return None  # (a percent-encoded name is decoded below)
    token = None
    kept = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == "access_token":
            if token is None:
                token = unquote_plus(value.decode("latin-1"), encoding="utf-8", errors="replace")
        else:
            kept.append(part)
    scope["query_string"] = b"&".join(kept)
    return token


class AccessLogMiddleware:
    """Request id, access log line, metrics and the catch-all 500 (see the module doc)."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            context = RequestContext(_request_id(scope))
            context.access_token = _take_access_token(scope)
            scope[_CONTEXT_KEY] = context
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = RequestContext(_request_id(scope))
        scope[_CONTEXT_KEY] = context
        header = (b"x-request-id", context.request_id.encode("ascii"))
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error on %s %s (request id %s)",
                scope["method"],
                scope["path"],
                context.request_id,
            )
            if started:
                raise  # too late for a problem: the server closes the connection
            status = 500
            await _send_internal_error(send, scope, context)
        finally:
            elapsed = time.perf_counter() - start
            route = context.route
            if route is None:
                matched = scope.get("route")
                route = getattr(matched, "path", _UNMATCHED) if matched is not None else _UNMATCHED
            backend = context.backend or ""
            if self.metrics is not None:
                self.metrics.observe_request(route, backend, status, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    '%s "%s %s" %d %.2fms backend=%s',
                    context.request_id,
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                    backend or "-",
                    extra={
                        "access": {
                            "request_id": context.request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": route,
                            "backend": backend or None,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        }
                    },
                )


async def _send_internal_error(send: Send, scope: Scope, context: RequestContext) -> None:
    # Imported here: problems imports this module for request_context().
    from .problems import INTERNAL_ERROR, MEDIA_TYPE, problem_body

    body = orjson.dumps(
        problem_body(
            INTERNAL_ERROR,
            "an internal error occurred; see the gateway log",
            instance=scope["path"],
            request_id=context.request_id,
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", MEDIA_TYPE.encode("ascii")),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"x-request-id", context.request_id.encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- configuration ---------------------------------------------------------------------


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}"
            + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    level: str = "info", fmt: str = "text", *, stream: Any = None
) -> Callable[[], None]:
    """Send every log record (ours and uvicorn's) to ``stream`` (stderr) as text or JSON.

    Returns a function that removes the handler again.

    Raises:
        ValueError: ``level`` or ``fmt`` is unknown.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(numeric)

    def remove() -> None:
        root.removeHandler(handler)

    return remove
