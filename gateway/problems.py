"""Every error the gateway answers with, as an RFC 9457 ``application/problem+json`` body.

One table, :data:`PROBLEM_TYPES`, maps exception classes to a status, a
stable ``type`` URI and a title; the exception handlers of :func:`install`
look an exception up by its class (then its bases) and nothing else in the
gateway picks a status for an error.

``type`` URIs are ``https://connbridge.dev/problems/<slug>``: the slug is
the stable part, and changing one is a breaking change of the API. Statuses
that have no entry of their own (an unusual ``HTTPException`` from Starlette)
use ``about:blank`` with the status phrase as title, as RFC 9457 suggests.

=============================  ======  ==========================================
slug                           status  raised for
=============================  ======  ==========================================
malformed-json                 400     a body that is not valid JSON
unauthorized                   401     a missing or unknown API key
forbidden                      403     a key not allowed for the backend
unknown-backend                404     no backend by that name
not-found                      404     no route for the path
method-not-allowed             405     the route exists with another method
malformed-http                 400     a request that is not valid HTTP/1.1 (by the
                                       server's protocol, :mod:`gateway.server.malformed`)
request-timeout                408     headers or body stalled (``header_timeout``/``body_timeout``)
not-acceptable                 406     ``/stream``: an ``Accept`` with neither stream type
body-too-large                 413     a body over ``max_body_bytes``
unsupported-media-type         415     a body that is not ``application/json``
invalid-request                422     a request body of the wrong shape
invalid-request-timeout        422     a ``Request-Timeout`` header that is no number of
                                       seconds > 0, or given twice (:mod:`gateway.deadlines`)
invalid-payload                422     a payload the schema or the codec refuses
headers-too-large              431     request headers over ``max_header_bytes``
backend-exception              502     the backend answered with an exception
backend-connection-lost        502     the backend closed the connection mid-call
backend-protocol-error         502     the backend broke the framing rules
refused-pickle                 502     a reply the allowlist unpickler refused
unconvertible-result           502     a reply with no JSON form
too-many-replies               502     a stream reached ``max_replies`` with no end in sight
overloaded                     503     too many callers wait for a connection
pool-exhausted                 503     no connection became free in time (never sent)
backend-busy                   503     the server takes no more connections now
too-many-streams               503     the backend has ``max_streams`` streams open
shutting-down                  503     the gateway is closing its pools
backend-unreachable            503     no address of the backend can be reached
backend-authentication-failed  503     the handshake with the backend failed
not-ready                      503     ``/readyz``: some backend is not ready
too-many-connections           503     the gateway holds its most client connections
wrong-backend-kind             422     compute on a manager backend, objects on a listener
typeid-not-allowed             422     a typeid outside the manager backend's ``typeids``
unknown-object                 404     no object by that id on the manager backend
unknown-method                 404     a method the object does not expose (or is narrowed away)
manager-failure                502     the manager failed (``#TRACEBACK``); text only logged
too-many-objects               503     the gateway holds ``max_objects`` on the backend
backend-timeout                504     no reply within the call timeout
internal-error                 500     a bug; details are only logged
=============================  ======  ==========================================

A body has ``type``, ``title``, ``status``, ``detail``, ``instance`` (the
request path) and ``request_id``, plus extensions: ``errors`` (a list of
``{"detail", "pointer"}`` with a JSON Pointer into the request body) for 422,
and for a backend named in the body that is unknown or not allowed;
``backend`` when one was chosen, ``exception`` (``{"type", "args"}``) for
``backend-exception``; in a batch, ``pointer`` to the failed entry (or to the
one field of it that the error is about). No traceback and no key ever
appears in one. :func:`problem_object` builds every body made from an
exception: the HTTP error responses, each failed batch entry and each error
reply on ``/ws``.

The gateway's own request errors are the :class:`GatewayError` subtree
(under :class:`~connbridge.errors.ConnbridgeError`)::

    GatewayError
    ├── MalformedJSON
    ├── UnsupportedMediaType
    ├── BodyTooLarge
    ├── Unauthorized
    ├── Forbidden
    ├── UnknownBackend
    ├── InvalidRequest              (errors: list of {"detail", "pointer"})
    │   └── InvalidRequestTimeout   (errors: [{"detail", "parameter", "in": "header"}])
    ├── InvalidPayload              (errors, as above)
    ├── BackendRaised               (the backend's exception object)
    ├── NotReady
    ├── RequestTimeout
    ├── HeadersTooLarge
    ├── TooManyConnections
    ├── NotAcceptable
    ├── TooManyReplies
    ├── TooManyStreams
    ├── WrongBackendKind
    ├── TypeidNotAllowed
    ├── UnknownObject
    ├── UnknownMethod
    └── TooManyObjects
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from connbridge.codec import DEFAULT_MAX_RESULT_BYTES, to_json
from connbridge.errors import (
    AcquireTimeout,
    BackendBusy,
    BackendUnavailable,
    CallTimeout,
    ConnbridgeError,
    ConnectError,
    ConnectionClosed,
    HandshakeError,
    ManagerFailure,
    ManagerProtocolError,
    PayloadError,
    PickleError,
    PoolClosed,
    PoolOverloaded,
    ProtocolError,
    ResultError,
)

from .context import request_context

__all__ = [
    "INTERNAL_DETAIL",
    "INTERNAL_ERROR",
    "MALFORMED_HTTP",
    "MEDIA_TYPE",
    "PROBLEM_BASE",
    "PROBLEM_TYPES",
    "BackendRaised",
    "BodyTooLarge",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "InvalidPayload",
    "InvalidRequest",
    "InvalidRequestTimeout",
    "MalformedJSON",
    "NotAcceptable",
    "NotReady",
    "ProblemType",
    "RequestTimeout",
    "TooManyConnections",
    "TooManyObjects",
    "TooManyReplies",
    "TooManyStreams",
    "TypeidNotAllowed",
    "Unauthorized",
    "UnknownBackend",
    "UnknownMethod",
    "UnknownObject",
    "UnsupportedMediaType",
    "WrongBackendKind",
    "describe",
    "install",
    "pointer",
    "problem_body",
    "problem_for",
    "problem_object",
    "problem_response",
]

logger = logging.getLogger("connbridge.gateway")

MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://connbridge.dev/problems/"


# -- the gateway's own errors ---------------------------------------------------------


class GatewayError(ConnbridgeError):
    """An error the gateway finds in a request, or about a backend's answer.

    ``extras`` become extension members of the problem body; ``headers``
    are added to the response. ``pointer`` is the JSON Pointer of the one
    value of the request the error is about, when there is one: it is listed
    in ``errors`` (unless ``extras`` has them), and a batch entry's error
    points there rather than at the whole entry.
    """

    def __init__(
        self,
        detail: str,
        *,
        extras: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        pointer: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extras = dict(extras or {})
        self.headers = dict(headers or {})
        self.pointer = pointer
        if pointer is not None:
            self.extras.setdefault("errors", [{"detail": detail, "pointer": pointer}])


class MalformedJSON(GatewayError):
    """The body is not valid JSON (or not UTF-8)."""


class UnsupportedMediaType(GatewayError):
    """The body is not declared as JSON; form and text bodies are refused even if they parse."""


class BodyTooLarge(GatewayError):
    """The body is larger than ``max_body_bytes``; it was not read to the end."""


class Unauthorized(GatewayError):
    """No API key, an unknown one, or not a ``Bearer`` credential."""


class Forbidden(GatewayError):
    """The API key is valid but not allowed for the backend asked for."""


class UnknownBackend(GatewayError):
    """No backend is configured by that name (or none is the default)."""


class InvalidRequest(GatewayError):
    """The request body does not have the documented shape; ``errors`` says where."""

    def __init__(
        self, detail: str, errors: Sequence[Mapping[str, Any]], *, pointer: str | None = None
    ) -> None:
        super().__init__(detail, extras={"errors": list(errors)}, pointer=pointer)
        self.errors = list(errors)


class InvalidRequestTimeout(InvalidRequest):
    """The ``Request-Timeout`` header is not one number of seconds > 0; ``errors`` names it."""


class InvalidPayload(GatewayError):
    """The payload breaks the backend's ``payload_schema`` or the codec's rules."""

    def __init__(self, detail: str, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(detail, extras={"errors": list(errors)})
        self.errors = list(errors)


class BackendRaised(GatewayError):
    """The backend answered with an exception object (not an error of the transport)."""

    def __init__(
        self,
        exc: BaseException,
        *,
        result_format: str = "json",
        max_depth: int = 250,
        max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        type_name: str | None = None,
    ) -> None:
        """``max_depth`` and ``max_bytes`` bound the arguments' JSON as for results;
        ``type_name`` replaces the exception's name (a manager's ``queue.Empty`` is
        ``Empty``, not ``_queue.Empty``)."""
        kind = type(exc)
        try:
            encoded = to_json(
                exc,
                format=result_format,  # type: ignore[arg-type]
                max_depth=max_depth,
                max_bytes=max_bytes,
            )
            described = encoded["$exception"]  # type: ignore[index]
        except (ResultError, KeyError, TypeError):
            # The arguments have no JSON form: say what it was, without them.
            name = kind.__name__ if kind.__module__ == "builtins" else kind.__qualname__
            described = {"type": name, "args": None}
        if type_name is not None:
            described = {**described, "type": type_name}
        super().__init__(
            f"the backend answered with an exception: {described['type']}",
            extras={"exception": described},
        )
        self.exception = exc


class NotAcceptable(GatewayError):
    """``/stream`` was asked for a media type it cannot write (``Accept``)."""


class TooManyReplies(GatewayError):
    """A stream reached the backend's ``max_replies`` before any end rule held."""


class TooManyStreams(GatewayError):
    """The backend already has ``max_streams`` streams open."""


class WrongBackendKind(GatewayError):
    """The request does not fit the backend's kind: payloads to a manager, objects of a Listener."""


class TypeidNotAllowed(GatewayError):
    """The typeid is not in the manager backend's ``typeids``."""


class UnknownObject(GatewayError):
    """No object by that id is held on the manager backend (never created, released or expired)."""


class UnknownMethod(GatewayError):
    """The object does not expose that method, or the backend's ``methods`` narrows it away."""


class TooManyObjects(GatewayError):
    """The gateway already holds ``max_objects`` objects on the manager backend."""


class NotReady(GatewayError):
    """``/readyz``: at least one backend cannot currently be reached."""


class RequestTimeout(GatewayError):
    """The client stopped sending its request's headers or body (see ``header_timeout``)."""


class HeadersTooLarge(GatewayError):
    """The request's header block is over ``max_header_bytes``."""


class TooManyConnections(GatewayError):
    """The gateway holds as many client connections (or WebSockets) as it may."""


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One row of the table: what an error looks like on the wire."""

    slug: str
    status: int
    title: str
    #: Seconds for a ``Retry-After`` header, for errors that pass by themselves.
    retry_after: int | None = None

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug if self.slug != "about:blank" else self.slug


def _row(slug: str, status: int, title: str, retry_after: int | None = None) -> ProblemType:
    return ProblemType(slug, status, title, retry_after)


INTERNAL_ERROR: Final = _row("internal-error", 500, "Internal error")
#: The detail of every internal error: what went wrong is only in the log.
INTERNAL_DETAIL: Final = "an internal error occurred; see the gateway log"
NOT_FOUND: Final = _row("not-found", 404, "Not found")
METHOD_NOT_ALLOWED: Final = _row("method-not-allowed", 405, "Method not allowed")
#: Answered by the server's protocol, before any app sees the request.
MALFORMED_HTTP: Final = _row("malformed-http", 400, "Malformed HTTP request")

#: The one table: exception class -> problem type. Looked up along the MRO, so
#: the most specific class listed wins (``AcquireTimeout`` is a ``PoolOverloaded``).
PROBLEM_TYPES: Final[Mapping[type[BaseException], ProblemType]] = {
    MalformedJSON: _row("malformed-json", 400, "Malformed JSON"),
    Unauthorized: _row("unauthorized", 401, "Missing or invalid API key"),
    Forbidden: _row("forbidden", 403, "API key not allowed for this backend"),
    UnknownBackend: _row("unknown-backend", 404, "Unknown backend"),
    BodyTooLarge: _row("body-too-large", 413, "Request body too large"),
    UnsupportedMediaType: _row("unsupported-media-type", 415, "Request body must be JSON"),
    InvalidRequest: _row("invalid-request", 422, "Invalid request"),
    InvalidRequestTimeout: _row("invalid-request-timeout", 422, "Invalid Request-Timeout header"),
    RequestValidationError: _row("invalid-request", 422, "Invalid request"),
    InvalidPayload: _row("invalid-payload", 422, "Invalid payload"),
    PayloadError: _row("invalid-payload", 422, "Invalid payload"),
    BackendRaised: _row("backend-exception", 502, "Backend raised an exception"),
    ConnectionClosed: _row("backend-connection-lost", 502, "Backend closed the connection"),
    ProtocolError: _row("backend-protocol-error", 502, "Backend broke the protocol"),
    PickleError: _row("refused-pickle", 502, "Backend reply refused"),
    ResultError: _row("unconvertible-result", 502, "Backend reply has no JSON form"),
    NotAcceptable: _row("not-acceptable", 406, "Not acceptable"),
    TooManyReplies: _row("too-many-replies", 502, "Stream too long"),
    TooManyStreams: _row("too-many-streams", 503, "Too many streams", retry_after=1),
    PoolOverloaded: _row("overloaded", 503, "Backend overloaded", retry_after=1),
    AcquireTimeout: _row("pool-exhausted", 503, "No backend connection free", retry_after=1),
    BackendBusy: _row("backend-busy", 503, "Backend busy", retry_after=1),
    PoolClosed: _row("shutting-down", 503, "Gateway shutting down", retry_after=1),
    BackendUnavailable: _row("backend-unreachable", 503, "Backend unreachable"),
    ConnectError: _row("backend-unreachable", 503, "Backend unreachable"),
    HandshakeError: _row(
        "backend-authentication-failed", 503, "Authentication to the backend failed"
    ),
    NotReady: _row("not-ready", 503, "Not ready", retry_after=1),
    RequestTimeout: _row("request-timeout", 408, "Request timeout"),
    HeadersTooLarge: _row("headers-too-large", 431, "Request headers too large"),
    TooManyConnections: _row(
        "too-many-connections", 503, "Too many client connections", retry_after=1
    ),
    CallTimeout: _row("backend-timeout", 504, "Backend timeout"),
    WrongBackendKind: _row("wrong-backend-kind", 422, "Not offered by this kind of backend"),
    TypeidNotAllowed: _row("typeid-not-allowed", 422, "Typeid not allowed"),
    UnknownObject: _row("unknown-object", 404, "Unknown object"),
    UnknownMethod: _row("unknown-method", 404, "Unknown method"),
    ManagerFailure: _row("manager-failure", 502, "The manager failed to serve the request"),
    ManagerProtocolError: _row("backend-protocol-error", 502, "Backend broke the protocol"),
    TooManyObjects: _row("too-many-objects", 503, "Too many objects held", retry_after=1),
}


def problem_for(exc: BaseException) -> ProblemType:
    """The table row for ``exc``: its class or nearest listed base, else ``internal-error``."""
    for cls in type(exc).__mro__:
        row = PROBLEM_TYPES.get(cls)
        if row is not None:
            return row
    return INTERNAL_ERROR


def _status_row(status: int) -> ProblemType:
    if status == 404:
        return NOT_FOUND
    if status == 405:
        return METHOD_NOT_ALLOWED
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return ProblemType("about:blank", status, phrase)


# -- bodies and responses ---------------------------------------------------------------


def problem_body(
    row: ProblemType,
    detail: str,
    *,
    instance: str | None = None,
    request_id: str | None = None,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object of a problem (also used for the errors inside a batch)."""
    body: dict[str, Any] = {
        "type": row.uri,
        "title": row.title,
        "status": row.status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    if extras:
        for key, value in extras.items():
            body.setdefault(key, value)
    return body


def problem_object(
    exc: BaseException,
    *,
    instance: str | None,
    request_id: str | None,
    backend: str | None = None,
    entry: str | None = None,
) -> tuple[ProblemType, dict[str, Any], dict[str, str]]:
    """The problem object for ``exc``, with its table row and the headers to send.

    The one builder of problems made from exceptions: the HTTP error
    responses, each failed entry of a batch, each error reply on ``/ws``.
    ``backend`` is the backend the call was for, once one was chosen;
    ``entry`` the pointer of a batch entry, which becomes the ``pointer``
    member unless the error points at a field of its own.
    """
    row, detail, extras, headers = describe(exc)
    if entry is not None:
        own = exc.pointer if isinstance(exc, GatewayError) else None
        extras = {**extras, "pointer": own or entry}
    if backend is not None:
        extras = {**extras, "backend": backend}
    body = problem_body(row, detail, instance=instance, request_id=request_id, extras=extras)
    return row, body, headers


def _respond(row: ProblemType, body: Mapping[str, Any], headers: Mapping[str, str]) -> Response:
    out = dict(headers or {})
    if row.retry_after is not None:
        out.setdefault("Retry-After", str(row.retry_after))
    return Response(orjson.dumps(body), status_code=row.status, headers=out, media_type=MEDIA_TYPE)


def problem_response(
    row: ProblemType,
    detail: str,
    *,
    scope: Mapping[str, Any] | None = None,
    extras: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A complete ``application/problem+json`` response for ``row``.

    ``scope`` (the ASGI scope of the request) supplies ``instance``, the
    request id and the backend, when known.
    """
    instance = request_id = None
    merged = dict(extras or {})
    if scope is not None:
        instance = scope.get("path")
        context = request_context(scope)
        if context is not None:
            request_id = context.request_id
            if context.backend is not None:
                merged.setdefault("backend", context.backend)
    body = problem_body(row, detail, instance=instance, request_id=request_id, extras=merged)
    return _respond(row, body, headers or {})


def describe(exc: BaseException) -> tuple[ProblemType, str, dict[str, Any], dict[str, str]]:
    """``(row, detail, extras, headers)`` for an exception, as the handlers render it."""
    row = problem_for(exc)
    if row is INTERNAL_ERROR:
        return INTERNAL_ERROR, INTERNAL_DETAIL, {}, {}
    if isinstance(exc, GatewayError):
        return row, exc.detail, exc.extras, exc.headers
    if isinstance(exc, PayloadError):
        # Raised with a path by the codec (inside "payload"); without one by
        # the JSON parser, which cannot say where the body nests too deeply.
        if not exc.path:
            return row, str(exc), {}, {}
        where = pointer(["payload", *exc.path])
        return row, str(exc), {"errors": [{"detail": str(exc), "pointer": where}]}, {}
    # connbridge messages never contain a key (see connbridge.errors).
    return row, str(exc), {}, {}


def _escape(part: object) -> str:
    # JSON Pointer (RFC 6901) escaping of one reference token.
    return str(part).replace("~", "~0").replace("/", "~1")


def pointer(location: Sequence[object]) -> str:
    """A JSON Pointer fragment (``#/a/0``) for a path of keys and indexes."""
    return "#" + "".join(f"/{_escape(p)}" for p in location)


# -- handlers -----------------------------------------------------------------------------


async def _on_error(request: Request, exc: Exception) -> Response:
    context = request_context(request.scope)
    row, body, headers = problem_object(
        exc,
        instance=request.scope.get("path"),
        request_id=context.request_id if context is not None else None,
        backend=context.backend if context is not None else None,
    )
    if row is INTERNAL_ERROR:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(row, body, headers)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    row = _status_row(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else row.title
    return problem_response(row, detail, scope=request.scope, headers=exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        location = list(error.get("loc", ()))
        where = location[0] if location else "body"
        item: dict[str, Any] = {"detail": str(error.get("msg", "invalid"))}
        if where == "body":
            item["pointer"] = pointer(location[1:])
        else:
            item["parameter"] = str(location[-1]) if location else ""
            item["in"] = str(where)
        errors.append(item)
    row = PROBLEM_TYPES[RequestValidationError]
    return problem_response(
        row, "the request does not match the API", scope=request.scope, extras={"errors": errors}
    )


async def _on_disconnect(request: Request, exc: Exception) -> Response:
    # Nobody reads this answer; it only gives the access log a status.
    return problem_response(_status_row(400), "the client disconnected", scope=request.scope)


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app`` (FastAPI's defaults are replaced)."""
    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(ConnbridgeError, _on_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
