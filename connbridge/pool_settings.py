"""The settings of a pool: every knob, its default and its rule, declared once.

:class:`PoolSettings` is the one declaration of a pool's limits and timeouts.
The gateway derives its ``[backends.NAME]`` keys from these fields (see
:mod:`gateway.settings`), so a field added here can be set from the TOML file
and the environment with no other change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .frames import DEFAULT_MAX_FRAME

__all__ = ["PoolSettings"]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Limits and timeouts of a pool; every one has a default. Times are seconds."""

    #: Connections per backend address (replica).
    max_connections: int = 8
    #: Longest wait for a free connection before :class:`AcquireTimeout`.
    acquire_timeout: float = 10.0
    #: Default bound on one call (acquire, send and receive).
    call_timeout: float = 30.0
    connect_timeout: float = 5.0
    #: After this, a silent handshake is treated as "busy server" (see module doc).
    handshake_timeout: float = 5.0
    #: Idle connections older than this are closed.
    idle_timeout: float = 300.0
    #: Connections older than this are closed when next idle.
    max_lifetime: float = 3600.0
    #: Callers that may wait for a connection; past it, :class:`PoolOverloaded` at once.
    max_waiters: int = 1000
    #: How long a late reply is awaited after a timeout before the connection is closed.
    drain_timeout: float = 60.0
    #: Default grace period of :meth:`Pool.close` for calls in flight.
    close_grace: float = 10.0
    #: How often host names are resolved again.
    dns_interval: float = 5.0
    max_frame: int = DEFAULT_MAX_FRAME
    allow_md5: bool = True
    pickle_protocol: int = 4
    #: Extra ``"module:qualname"`` entries for the unpickler's allowlist.
    allowlist: tuple[str, ...] = ()
    #: Encoding of Python 2 byte strings in pickles (``"bytes"`` keeps them bytes).
    py2_encoding: str = "utf-8"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"{f.name} must be positive, not {value!r}")
        if not 0 <= self.pickle_protocol <= 5:
            raise ValueError(f"pickle_protocol must be 0..5, not {self.pickle_protocol}")
