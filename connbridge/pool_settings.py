"""The settings of a pool: every knob, its default and its rule, declared once.

:class:`PoolSettings` is the one declaration of a pool's limits and timeouts.
Everything else reads it: the pool itself, :mod:`connbridge.connection`
(whose connect and handshake defaults are the ones here), and the gateway,
which derives its ``[backends.NAME]`` keys from these fields (see
:mod:`gateway.settings`). A field added here can therefore be set from the
gateway's TOML file and environment with no other change.

The rule of a field: a number must be finite and greater than 0, unless the
field names its own check in its metadata (``metadata={"check": ...}``, a
function that returns what is wrong with a value, or ``None``). Each field
also carries its meaning in one line (:func:`field_doc`), which the gateway
gives its key (``description``) and the README's table of keys.
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
    "field_doc",
    "field_problem",
]

#: Seconds to establish a connection (TCP or Unix), in a pool and for :func:`connbridge.connect`.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Seconds the handshake may take, client or server side.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0

#: The metadata keys of a field's own check and of its meaning.
_CHECK: Final = "check"
_DOC: Final = "doc"


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


def _knob(default: Any, doc: str, check: Callable[[object], str | None] | None = None) -> Any:
    """A field with its one-line meaning (the README's table of keys) and its own check, if any."""
    metadata: dict[str, Any] = {_DOC: doc}
    if check is not None:
        metadata[_CHECK] = check
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Limits and timeouts of a pool; every one has a default. Times are seconds.

    Raises:
        ValueError: a field breaks its rule (see the module docstring); the
            message starts with the field's name.
    """

    max_connections: int = _knob(8, "Connections open at most to each address (replica).")
    acquire_timeout: float = _knob(
        10.0, "Seconds a call may wait for a free connection (503 `pool-exhausted` past it)."
    )
    call_timeout: float = _knob(
        30.0,
        "Seconds one call may take, waiting, sending and receiving; a request's `timeout` "
        "can only shorten it (old name: `timeout`).",
    )
    connect_timeout: float = _knob(
        DEFAULT_CONNECT_TIMEOUT, "Seconds to open a TCP or Unix connection."
    )
    handshake_timeout: float = _knob(
        DEFAULT_HANDSHAKE_TIMEOUT,
        "Seconds the authkey handshake may take; a server silent for longer is taken as busy.",
    )
    idle_timeout: float = _knob(300.0, "Seconds an unused connection is kept before it is closed.")
    max_lifetime: float = _knob(
        3600.0, "Seconds after which a connection is closed the next time it is idle."
    )
    max_waiters: int = _knob(
        1000, "Calls that may queue for a connection; one more is refused at once (503)."
    )
    drain_timeout: float = _knob(
        60.0,
        "Seconds the late reply of a timed-out call is awaited before its connection is closed.",
    )
    max_draining: int = _knob(
        4, "Connections per address awaiting a late reply outside the call slots (0: none).", _count
    )
    replies: Literal["one", "many"] = _knob(
        "one",
        '`"one"` reply per message, or `"many"` (a message may be answered several times).',
        _replies,
    )
    pipeline: int = _knob(
        1,
        "Requests sent ahead on one connection, answered in order; more than 1 only for "
        "servers that answer every message once, in order.",
    )
    settle_time: float = _knob(
        0.05, "Seconds of quiet after a reply that show no further reply follows."
    )
    quiet_check_interval: float = _knob(
        2.0, "Seconds between two such quiet checks of a connection kept busy."
    )
    readiness_interval: float = _knob(
        10.0,
        "Seconds after which an address with no connection open is proved alive again "
        "with a real, authenticated connection.",
    )
    close_grace: float = _knob(
        10.0, "Seconds calls in flight get when the pool closes, by default."
    )
    dns_interval: float = _knob(5.0, "Seconds between two lookups of a host name's addresses.")
    max_frame: int = _knob(
        DEFAULT_MAX_FRAME,
        "Largest message accepted from the server, in bytes, checked from its header.",
    )
    allow_md5: bool = _knob(
        True, "Accept the legacy HMAC-MD5 handshake (servers on Python 3.11 and older)."
    )
    legacy_digest: Literal["md5", "sha256"] = _knob(
        "md5",
        'HMAC of the legacy handshake: `"md5"`, or `"sha256"` for FIPS-patched Pythons, '
        "which answer it with an unprefixed SHA-256.",
        _legacy_digest,
    )
    pickle_protocol: int = _knob(
        4, "Pickle protocol of the requests sent (2 for Python 2 servers).", _pickle_protocol
    )
    # What one reply's pickle may cost (see :mod:`connbridge.pickle_limits`).
    pickle_max_depth: int = _knob(256, "Deepest nesting of containers in a reply's pickle.")
    pickle_max_nodes: int = _knob(
        1_000_000, "Values that shared references may add to a reply once it is expanded."
    )
    pickle_max_hashed_nodes: int = _knob(
        100_000, "Values in one hashed item of a reply (a set member, a dict key)."
    )
    pickle_work_per_byte: int = _knob(
        4, "Items a reply's pickle may build or copy per byte it is long."
    )
    allowlist: tuple[str, ...] = _knob(
        (),
        'Classes the unpickler may build beyond the plain types, as `"module:qualname"`.',
        _allowlist,
    )
    py2_encoding: str = _knob(
        "utf-8",
        'Text encoding of Python 2 byte strings in replies (`"bytes"` keeps them bytes; '
        '`"latin1"` for Python 2 dates and UUIDs).',
        _py2_encoding,
    )

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


def field_doc(name: str) -> str:
    """The one-line meaning of the field ``name``, as the gateway documents its key.

    Raises:
        KeyError: :class:`PoolSettings` has no field ``name``.
    """
    doc: str = _FIELDS[name].metadata[_DOC]
    return doc
