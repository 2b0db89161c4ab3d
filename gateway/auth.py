"""API keys: stored as SHA-256 digests, sent as ``Authorization: Bearer <key>``.

The configuration holds only the hex SHA-256 of each key, so a leaked
configuration file does not leak keys. A presented key is hashed and its
digest compared with :func:`hmac.compare_digest` against *every* configured
digest (no early exit), so neither the comparison nor the position of the
matching entry shows in the response time.

Each key is scoped: ``backends = ["*"]`` allows every backend, a list of
names only those. With no keys configured the API is open, and the command
line refuses to serve a non-loopback address unless ``allow_anonymous`` is
set.

``/healthz`` and ``/readyz`` need no key. ``/metrics`` needs a key (any
scope) when keys are configured, unless ``[gateway] metrics_public = true``:
it names backends and their traffic, and Prometheus can send a bearer token.
A scoped key sees only its backends' series there (:mod:`gateway.metrics`).

The WebSocket routes and ``GET /backends/{name}/stream`` use
:meth:`KeyRing.authenticate` as well, with the key from the ``Authorization``
header or, for browsers that cannot set headers on a WebSocket or an
``EventSource``, from an ``access_token`` query parameter. The access-log
middleware takes that parameter out of the scope of every request before
routing (:func:`take_access_token`), so no log line and no route ever sees
it; only those routes read it back from the request's context.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from .problems import Forbidden, Unauthorized
from .settings import ApiKeySettings

__all__ = ["ANONYMOUS", "WWW_AUTHENTICATE", "KeyRing", "Principal", "take_access_token"]

#: ``WWW-Authenticate`` value of every 401 (RFC 6750).
WWW_AUTHENTICATE: Final = 'Bearer realm="connbridge"'
_INVALID_TOKEN: Final = 'Bearer realm="connbridge", error="invalid_token"'  # noqa: S105


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's name and scope, or anonymous when no keys are configured."""

    #: The key's configured name; ``None`` for anonymous access.
    name: str | None
    #: Backends this caller may use; ``None`` means all of them.
    backends: frozenset[str] | None

    def may_use(self, backend: str) -> bool:
        """Whether this caller's scope includes ``backend``."""
        return self.backends is None or backend in self.backends

    def require(self, backend: str, *, pointer: str | None = None) -> None:
        """Raise :class:`~gateway.problems.Forbidden` unless the scope includes ``backend``.

        ``pointer`` is where the request names the backend, if in its body.
        """
        if not self.may_use(backend):
            raise Forbidden(
                f"API key {self.name!r} may not use backend {backend!r}", pointer=pointer
            )


#: The caller when no keys are configured: everything is allowed.
ANONYMOUS: Final = Principal(None, None)


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class KeyRing:
    """The configured API keys; answers "who is this?" for a presented key."""

    def __init__(self, keys: Iterable[ApiKeySettings]) -> None:
        self._entries = tuple(
            _Entry(
                bytes.fromhex(key.sha256),
                Principal(key.name, None if "*" in key.backends else frozenset(key.backends)),
            )
            for key in keys
        )

    @property
    def enabled(self) -> bool:
        """True when keys are configured (and therefore required)."""
        return bool(self._entries)

    @property
    def scoped(self) -> bool:
        """True when some key is limited to a list of backends (so a call can get 403)."""
        return any(entry.principal.backends is not None for entry in self._entries)

    def __repr__(self) -> str:
        return f"<KeyRing {len(self._entries)} key(s)>"

    def authenticate(
        self, authorization: str | None = None, *, access_token: str | None = None
    ) -> Principal:
        """The caller behind an ``Authorization`` header value or an ``access_token``.

        The header wins when both are given. Header values are taken as
        Starlette gives them (latin-1 decoded), so the key's bytes are
        hashed as the client sent them; a query token is hashed as UTF-8.

        Raises:
            Unauthorized: keys are configured and none is given, the header
                is not a ``Bearer`` credential, or the key is unknown. The
                exception carries the ``WWW-Authenticate`` header to send.
        """
        if not self._entries:
            return ANONYMOUS
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized(
                    "send the API key as 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": WWW_AUTHENTICATE},
                )
            secret = token.encode("latin-1", "replace")
        elif access_token:
            secret = access_token.encode("utf-8", "surrogateescape")
        else:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        principal = self._match(hashlib.sha256(secret).digest())
        if principal is None:
            raise Unauthorized("unknown API key", headers={"WWW-Authenticate": _INVALID_TOKEN})
        return principal

    def _match(self, digest: bytes) -> Principal | None:
        found: Principal | None = None
        for entry in self._entries:
            # Every entry is compared, match or not, so timing says nothing.
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry.principal
        return found


def take_access_token(scope: MutableMapping[str, Any]) -> str | None:
    """Remove ``access_token`` from the query string of ``scope``; return its (first) value.

    Called before routing, for every WebSocket and every HTTP request with a
    query string, so that no log line (uvicorn logs the path with its query
    string when it accepts or refuses a socket, including one to an unknown
    path, and in its HTTP access log when that is on) and no route ever sees
    the key.
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
