"""The settings of a pool: every knob, its default and its rule, declared once.

:class:`PoolSettings` is the one declaration of a pool's limits and timeouts.
Everything else reads it: the pool itself, :mod:`connbridge.connection`
(whose connect and handshake defaults are the ones here), and the gateway,
which derives its ``[backends.NAME]`` keys from these fields (see
:mod:`gateway.settings`). A field added here can therefore be set from the
gateway's TOML file and environment with no other change.

The rule of a field: a number must be finite and greater than 0, unless the
field names its own check in its metadata (``metadata={"check": ...}``, a
function that returns what is wrong with a value, or ``None``).
:func:`field_problem` applies it; :class:`PoolSettings` applies it to every
field when it is built, and the gateway to each key as it reads it. Problems
are worded without the value, which may come from a confidential file.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Final, Literal

from .frames import DEFAULT_MAX_FRAME
from .unpickler import resolve_entry

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "PoolSettings",
    "field_problem",
]

#: Seconds to establish a connection (TCP or Unix), in a pool and for :func:`connbridge.connect`.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Seconds the handshake may take, client or server side.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0

#: The metadata key of a field's own check.
_CHECK: Final = "check"


def _pickle_protocol(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 5:
        return "must be a pickle protocol between 0 and 5"
    return None


def _allowlist(value: object) -> str | None:
    # Imported now, so an entry that cannot be resolved is refused when the
    # settings are made instead of failing the first call.
    if not isinstance(value, tuple | list) or not all(isinstance(entry, str) for entry in value):
        return "must be a sequence of 'module:qualname' strings"
    for entry in value:
        try:
            resolve_entry(entry)
        except ValueError as exc:
            # The entry names a class the operator allows, not a secret.
            return str(exc)
    return None


def _py2_encoding(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be the name of a text encoding, or 'bytes'"
    if value != "bytes":
        try:
            codecs.lookup(value)
        except LookupError:
            return "unknown encoding"
    return None


def _count(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "must be a whole number, 0 or more"
    return None


def _replies(value: object) -> str | None:
    if value not in ("one", "many"):
        return 'must be "one" or "many"'
    return None


def _legacy_digest(value: object) -> str | None:
    if value not in ("md5", "sha256"):
        return 'must be "md5" or "sha256"'
    return None


def _checked(default: Any, check: Callable[[object], str | None]) -> Any:
    return field(default=default, metadata={_CHECK: check})


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Limits and timeouts of a pool; every one has a default. Times are seconds.

    Raises:
        ValueError: a field breaks its rule (see the module docstring); the
            message starts with the field's name.
    """

    #: Connections per backend address (replica).
    max_connections: int = 8
    #: Longest wait for a free connection before :class:`AcquireTimeout`.
    acquire_timeout: float = 10.0
    #: Default bound on one call (acquire, send and receive); a call may ask for less.
    call_timeout: float = 30.0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: After this, a silent handshake is treated as "busy server" (see :mod:`connbridge.pool`).
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: Idle connections older than this are closed.
    idle_timeout: float = 300.0
    #: Connections older than this are closed when next idle.
    max_lifetime: float = 3600.0
    #: Callers that may wait for a connection; past it, :class:`PoolOverloaded` at once.
    max_waiters: int = 1000
    #: How long a late reply is awaited after a timeout before the connection is closed.
    drain_timeout: float = 60.0
    #: Drains per address that do not take a call slot (0: every drain keeps its slot).
    max_draining: int = _checked(4, _count)
    #: ``"one"`` reply per message, or ``"many"`` (see :mod:`connbridge.pool`).
    replies: Literal["one", "many"] = _checked("one", _replies)
    #: Requests in flight on one connection, answered in order (1: one at a time).
    #: Only for backends that answer every message exactly once, in order.
    pipeline: int = 1
    #: Quiet time after a reply that shows whether more replies follow.
    settle_time: float = 0.05
    #: How often each connection sits through that quiet time again under load.
    quiet_check_interval: float = 2.0
    #: An address with no connection open that proved alive for this long is
    #: checked with a real, authenticated connection (then closed cleanly).
    readiness_interval: float = 10.0
    #: Default grace period of :meth:`Pool.close` for calls in flight.
    close_grace: float = 10.0
    #: How often host names are resolved again.
    dns_interval: float = 5.0
    max_frame: int = DEFAULT_MAX_FRAME
    allow_md5: bool = True
    #: The legacy handshake's HMAC: ``"md5"`` (the stdlib), or ``"sha256"`` for
    #: FIPS-patched Pythons, which answer it with an unprefixed SHA-256.
    legacy_digest: Literal["md5", "sha256"] = _checked("md5", _legacy_digest)
    pickle_protocol: int = _checked(4, _pickle_protocol)
    #: Extra ``"module:qualname"`` entries for the unpickler's allowlist.
    allowlist: tuple[str, ...] = _checked((), _allowlist)
    #: Encoding of Python 2 byte strings in pickles (``"bytes"`` keeps them bytes).
    py2_encoding: str = _checked("utf-8", _py2_encoding)

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem is not None:
                raise ValueError(f"{f.name}: {problem}")


_FIELDS: Final[Mapping[str, Field[Any]]] = {f.name: f for f in fields(PoolSettings)}


def _problem(f: Field[Any], value: object) -> str | None:
    check: Callable[[object], str | None] | None = f.metadata.get(_CHECK)
    if check is not None:
        return check(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    if value <= 0:
        return "must be greater than 0"
    return None


def field_problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the field ``name`` (``None``: nothing).

    The answer never repeats the value.

    Raises:
        KeyError: :class:`PoolSettings` has no field ``name``.
    """
    return _problem(_FIELDS[name], value)
