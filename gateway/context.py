"""The context of one request: its id, route, backend and caller's credential.

The access-log middleware (:mod:`gateway.log`) opens one
:class:`RequestContext` per HTTP request and WebSocket, before routing, and
keeps it in the ASGI scope. The routes fill in what they learn (the route
template, the backend) through the setters here; the access line, the
metrics and every problem object read it back. Keeping it in a module of
its own, which imports nothing of the gateway, is what lets all of them use
it without importing each other.

The request id is the client's ``X-Request-ID`` when it is sane (1-128
characters of ``A-Z a-z 0-9 . _ : @ / + = -``), otherwise 96 random bits in
hex.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "RequestContext",
    "new_request_id",
    "open_context",
    "request_context",
    "set_backend",
    "set_route",
]

_CONTEXT_KEY: Final = "connbridge.context"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestContext:
    """What the middleware and the routes share about one request (in its scope)."""

    request_id: str
    #: Route template for metrics; routes set it, otherwise the matched route's path.
    route: str | None = None
    #: Backend the request was for, once known.
    backend: str | None = None
    #: The caller's key when it came as an ``access_token`` query parameter (a
    #: WebSocket's, an EventSource's; see :func:`gateway.auth.take_access_token`).
    access_token: str | None = field(default=None, repr=False)


def open_context(scope: MutableMapping[str, Any]) -> RequestContext:
    """Give the request of ``scope`` its context (and its request id); return it."""
    context = RequestContext(_request_id(scope))
    scope[_CONTEXT_KEY] = context
    return context


def request_context(scope: Mapping[str, Any]) -> RequestContext | None:
    """The :class:`RequestContext` of a request, if the middleware runs."""
    context: RequestContext | None = scope.get(_CONTEXT_KEY)
    return context


def set_route(scope: Mapping[str, Any], route: str) -> None:
    """Record the route template of this request for the access log and metrics."""
    context = request_context(scope)
    if context is not None:
        context.route = route


def set_backend(scope: Mapping[str, Any], name: str) -> None:
    """Record the backend of this request for the access log, metrics and problems."""
    context = request_context(scope)
    if context is not None:
        context.backend = name


def new_request_id() -> str:
    """A fresh random request id, for an answer that has no request scope."""
    return _random_ids.next_id()


def _request_id(scope: Mapping[str, Any]) -> str:
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
