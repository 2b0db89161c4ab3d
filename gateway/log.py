"""Logging: one line per request, the request id, and a last-resort error handler.

:class:`AccessLogMiddleware` is a plain ASGI middleware (Starlette's
``BaseHTTPMiddleware`` runs the app in another task and costs far more per
request). For every HTTP request it:

* opens the request's context (:mod:`gateway.context`), whose request id is
  returned in the response's ``X-Request-ID`` header;
* logs one line (:func:`log_access`) with the request id, method, path (never
  the query string, which may carry an ``access_token``), backend, status and
  duration;
* records the request in the Prometheus metrics;
* answers an exception that escaped everything else with a bare 500
  problem, and logs the traceback; the client never sees it.

Secrets and forged lines. Every record that reaches the handler of
:func:`configure_logging` passes :class:`SecretFilter`: an ``access_token``
query parameter (under any percent-encoding of its name), the value of an
``Authorization`` (or ``Proxy-Authorization``) header and any ``Bearer``
credential are replaced by ``<redacted>``, in the message and in a
traceback's text; this is what keeps keys out of uvicorn's and websockets'
debug lines, which show the raw upgrade request and its headers. Its string
arguments are escaped (:func:`escape`): a request target, a header or any
other text from a client can never start a new line or end a quoted field.
The access line itself is built from escaped fields and skips the filter.

The module is named ``log`` rather than ``logging`` so that it never shadows
the standard library.

The ``access_token`` query parameter (the key of a WebSocket, or of an
``EventSource`` on ``GET /backends/{name}/stream``) is taken out of the
scope before routing (:func:`gateway.auth.take_access_token`), so no log
line and no route sees it. For a WebSocket the middleware only does that and
opens the context; the WebSocket routes write the socket's line with
:func:`log_access` when it ends.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_plus

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import take_access_token
from .context import RequestContext, open_context
from .problems import INTERNAL_DETAIL, INTERNAL_ERROR, MEDIA_TYPE, problem_body

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

__all__ = [
    "ACCESS_LOGGER",
    "AccessLogMiddleware",
    "JSONFormatter",
    "SecretFilter",
    "configure_logging",
    "escape",
    "log_access",
    "redact",
    "set_trace_fields",
]

#: Logger of the per-request lines.
ACCESS_LOGGER: Final = "connbridge.gateway.access"

_UNMATCHED: Final = "<unmatched>"

logger = logging.getLogger("connbridge.gateway")
access_logger = logging.getLogger(ACCESS_LOGGER)


def _escape_char(char: str) -> str:
    if char == '"' or char == "\\":
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with control and other unprintable characters, ``"`` and ``\\`` escaped.

    ``GET /healthz%0a<text>`` (the path is percent-decoded) cannot forge a
    second line: the newline is written ``\\x0a``.
    """
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(map(_escape_char, text))


REDACTED: Final = "<redacted>"
# name=value pairs of a query string; the name is percent-decoded before it is compared.
_QUERY_PAIR = re.compile(r"([?&;])([^=&;\s#\"'?]*)=([^&;\s#\"']*)")
_AUTHORIZATION = re.compile(
    r"(\b(?:proxy-)?authorization)([\"']?\s*[:=,]\s*(?-i:b)?[\"']?)([^\r\n\"']*)", re.IGNORECASE
)
_BEARER = re.compile(r"(\bbearer\s+)([^\s\"',;)\]]+)", re.IGNORECASE)


def _redact_pair(match: re.Match[str]) -> str:
    if unquote_plus(match[2]).lower() != "access_token":
        return match[0]
    return f"{match[1]}{match[2]}={REDACTED}"


def redact(text: str) -> str:
    """``text`` without credentials: ``access_token`` values, ``Authorization`` headers, bearers.

    Returns ``text`` itself when there is nothing to take out.
    """
    lower = text.lower()
    if "=" in text and ("token" in lower or "%" in text):
        text = _QUERY_PAIR.sub(_redact_pair, text)
    if "authorization" in lower:
        text = _AUTHORIZATION.sub(lambda m: m[1] + m[2] + REDACTED, text)
    if "bearer" in lower:
        text = _BEARER.sub(lambda m: m[1] + REDACTED, text)
    return text


class SecretFilter(logging.Filter):
    """Takes credentials out of every record and escapes its text arguments (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS_LOGGER:
            return True  # made of escaped fields, without the query string
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(escape(a) if isinstance(a, str) else a for a in args)
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def log_access(
    request_id: str | None,
    method: str,
    path: str,
    route: str,
    elapsed: float,
    *,
    status: int | None = None,
    close_code: int | None = None,
    backend: str = "",
) -> None:
    """Write the access line of one HTTP request (``status``) or WebSocket (``close_code``).

    The text line reads ``<id> "<METHOD> <path>" <code> <ms>ms``, and
    ``backend=<name>`` for HTTP; the JSON formatter adds the same fields.
    ``path`` never has the query string, which may hold an ``access_token``.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    path = escape(path)
    ms = elapsed * 1000
    fields: dict[str, Any] = {"request_id": request_id, "method": method, "path": path}
    fields["route"] = route
    if close_code is None:
        fields["backend"] = backend or None
        fields["status"] = status
        code, tail = status, f" backend={backend or '-'}"
    else:
        fields["close_code"] = code = close_code
        tail = ""
    fields["duration_ms"] = round(ms, 3)
    access_logger.info(
        '%s "%s %s" %d %.2fms%s',
        *(request_id, method, path, code, ms, tail),
        extra={"access": fields},
    )


class AccessLogMiddleware:
    """Request id, access log line, metrics and the catch-all 500 (see the module doc)."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # The WebSocket routes write their own line when the socket ends.
            open_context(scope).access_token = take_access_token(scope)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = open_context(scope)
        if scope.get("query_string"):
            # An EventSource's key (GET .../stream): out of the scope before routing.
            context.access_token = take_access_token(scope)
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
                escape(scope["path"]),
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
            log_access(
                context.request_id,
                scope["method"],
                scope["path"],
                route,
                elapsed,
                status=status,
                backend=backend,
            )


async def _send_internal_error(send: Send, scope: Scope, context: RequestContext) -> None:
    body = orjson.dumps(
        problem_body(
            INTERNAL_ERROR,
            INTERNAL_DETAIL,
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


#: ``trace_id`` and ``span_id`` of the current span; set by :mod:`gateway.tracing`
#: when tracing is on, so that with it off the formatter imports and calls nothing.
_trace_fields: Callable[[], dict[str, str] | None] | None = None


def set_trace_fields(source: Callable[[], dict[str, str] | None] | None) -> None:
    """Have every JSON line carry what ``source`` returns (``None``: nothing)."""
    global _trace_fields
    _trace_fields = source


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the access fields.

    With tracing on, ``trace_id`` and ``span_id`` follow the message, from the
    span current where the record was logged (the handler formats it there).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}"
            + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _trace_fields is not None:
            ids = _trace_fields()
            if ids is not None:
                entry.update(ids)
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            # The filter leaves the (redacted) text of the traceback in exc_text.
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
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
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(numeric)

    def remove() -> None:
        root.removeHandler(handler)

    return remove
