"""One backend address (a replica) as the pool sees it: its connections, counts and health.

A :class:`Replica` owns every counter the pool keeps for an address, and each
counter changes only through one method per transition (a connection checked
out, released, draining, opening, stalled, closed; the address marked up or
down). The pool asks questions (:meth:`Replica.can_grow`,
:meth:`Replica.ejected`) instead of reading and writing counters itself, so
a count cannot drift because one code path forgot its half of a pair.

Two things the pool learns about an address live here too:

* its **capacity**: how many connections a server that serves a few at a time
  takes (see :mod:`connbridge.pool`), learned from a handshake that stays
  silent while other connections work, and kept while the server answers;
* its **reuse**: whether a connection may carry a second exchange after its
  first reply. Until a connection has sat idle for a moment after a reply
  with nothing arriving, the address is :attr:`Reuse.UNPROVEN`; a server that
  closes after each reply, or sends a frame nobody asked for, makes it
  :attr:`Reuse.NEVER` (each connection then carries one exchange).
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from enum import Enum
from typing import TYPE_CHECKING, Generic, TypedDict, TypeVar

from .addresses import Address

if TYPE_CHECKING:
    import asyncio

#: What the pool keeps in a replica's idle list (its holders); generic so
#: that this module need not import :mod:`connbridge.holder`, which uses it.
H = TypeVar("H")

__all__ = ["Replica", "ReplicaState", "ReplicaView", "Reuse"]

# Backoff of an address after a failure: doubles from the base up to the cap.
BACKOFF_BASE = 0.25
BACKOFF_CAP = 30.0
# After a wrong key: each attempt may kill a fragile server, so wait longer.
AUTH_BACKOFF_BASE = 5.0
AUTH_BACKOFF_CAP = 300.0


class ReplicaState(Enum):
    """Health of an address, from what its connections showed."""

    UNKNOWN = "unknown"  # nothing connected yet
    UP = "up"  # the last connection attempt worked
    DOWN = "down"  # ejected until its backoff ends and a probe reconnects


class Reuse(Enum):
    """Whether a connection to this address may carry another exchange."""

    UNPROVEN = "unproven"  # no connection has sat idle after a reply yet
    PROVEN = "proven"  # connections stay open and quiet after a reply
    NEVER = "never"  # the server closes after a reply or sends extra replies


class ReplicaView(TypedDict, total=False):
    """What :meth:`Replica.view` reports (the per-address part of the pool's statistics)."""

    address: str
    state: str
    open: int
    idle: int
    in_use: int
    draining: int
    opening: int
    stalled_handshakes: int
    capacity: int | None
    reuse: str
    calls: int
    errors: dict[str, int]
    consecutive_failures: int
    resolved_from: str
    last_error: str
    error_kind: str | None
    retry_in_s: float
    stale: bool


class Replica(Generic[H]):
    """One resolved address of a backend and everything the pool counts for it."""

    __slots__ = (
        "_budgeted_drains",
        "_closing",
        "_draining",
        "_established",
        "_in_use",
        "_opening",
        "_settling",
        "_stalled",
        "address",
        "alive_at",
        "calls",
        "capacity",
        "ejected_until",
        "error_kind",
        "errors",
        "ever_up",
        "failures",
        "idle",
        "last_error",
        "prober",
        "reuse",
        "source",
        "stale",
        "state",
    )

    def __init__(self, address: Address, source: Address) -> None:
        self.address = address
        #: The configured address this one was resolved from.
        self.source = source
        #: Idle connections, most recently used last.
        self.idle: deque[H] = deque()
        self.state = ReplicaState.UNKNOWN
        self.reuse = Reuse.UNPROVEN
        self.capacity: int | None = None
        #: True once a connection here has worked at all.
        self.ever_up = False
        self.failures = 0
        self.ejected_until = 0.0
        self.last_error: str | None = None
        #: What failed last: "connect", "auth", "handshake", "handshake_timeout", ...
        self.error_kind: str | None = None
        #: True once DNS no longer lists it: it takes no new calls.
        self.stale = False
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.prober: asyncio.Task[None] | None = None
        #: When a connection here last proved alive (a handshake, a reply).
        self.alive_at = 0.0
        self._established = 0  # open connections, whatever they are doing
        self._in_use = 0  # checked out by a caller (or settling after a reply)
        self._draining = 0  # reading the late reply of an abandoned exchange
        self._budgeted_drains = 0  # drains counted against max_draining, not the slots
        self._opening = 0  # connect or handshake in progress
        self._settling = 0  # in use: quiet time after a first reply (see Reuse)
        self._stalled = 0  # handshakes that stayed silent and wait for the server
        self._closing = 0  # taken out of service, the server's EOF not seen yet

    # read-only counts

    @property
    def established(self) -> int:
        return self._established

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def draining(self) -> int:
        return self._draining

    @property
    def opening(self) -> int:
        return self._opening

    @property
    def stalled(self) -> int:
        return self._stalled

    @property
    def settling(self) -> int:
        return self._settling

    @property
    def closing(self) -> int:
        """Connections closing in the background: the server may still be serving them."""
        return self._closing

    @property
    def busy(self) -> bool:
        """True while anything of this address is in flight (not just idle or closed)."""
        return bool(self._in_use or self._draining or self._opening or self._stalled)

    @property
    def may_serve(self) -> bool:
        """True if some connection of this address, open or opening, may yet serve a caller.

        A stalled handshake does not count: its server may never get to it.
        """
        return bool(self.idle or self._in_use or self._draining or self._opening)

    @property
    def load(self) -> int:
        """Calls in flight, for picking the least loaded address."""
        return self._in_use + self._draining

    # connection transitions

    def checked_out(self) -> None:
        self._in_use += 1

    def released(self) -> None:
        self._in_use -= 1

    def settle_started(self) -> None:
        self._settling += 1

    def settle_ended(self) -> None:
        self._settling -= 1

    def drain_started(self, max_draining: int) -> bool:
        """A checked-out connection starts draining; True if it fits the drain budget.

        A drain within ``max_draining`` stops counting against the address's
        call slots, so abandoned calls cannot starve the others. Past the
        budget it keeps its slot.
        """
        self._in_use -= 1
        self._draining += 1
        if self._budgeted_drains < max_draining:
            self._budgeted_drains += 1
            return True
        return False

    def drain_ended(self, budgeted: bool) -> None:
        """The drain finished (the connection is then released or closed)."""
        self._draining -= 1
        if budgeted:
            self._budgeted_drains -= 1

    def open_started(self) -> None:
        self._opening += 1

    def open_ended(self, *, established: bool) -> None:
        self._opening -= 1
        if established:
            self._established += 1

    def stall_started(self) -> None:
        """A handshake stayed silent; with other connections working, capacity is learned."""
        self._stalled += 1
        if self._established > 0 and (self.capacity is None or self.capacity > self._established):
            self.capacity = self._established

    def stall_ended(self, *, established: bool) -> None:
        self._stalled -= 1
        if established:
            self._established += 1

    def closed(self) -> None:
        """One of its connections was taken out of service (closing in the background)."""
        self._established -= 1
        self._closing += 1

    def close_finished(self) -> None:
        """That connection's close ended: its server is done with it."""
        self._closing -= 1

    def serving_another(self) -> bool:
        """Is one of ours open here, or still closing (the server not yet done with it)?

        A server that serves one connection at a time reaches a new one only
        after the previous one's close, which the pool does in the background.
        """
        return self._established > 0 or self._closing > 0

    # capacity and growth

    def slots_used(self) -> int:
        """Connections that count against ``max_connections``."""
        return self._established + self._opening - self._budgeted_drains

    def can_grow(self, limit: int) -> bool:
        """May the pool open one more connection here now?

        Never while a handshake is open or stalled (one attempt at a time per
        address), and never past a learned capacity, counting every open
        connection: such a server serves a drain as it serves a call.
        """
        if self.stale or self.state is ReplicaState.DOWN or self._opening or self._stalled:
            return False
        if self.capacity is not None and self._established >= self.capacity:
            return False
        return self.slots_used() < limit

    def at_capacity(self) -> bool:
        """True when a learned capacity is taken (or a handshake already waits)."""
        if self._stalled:
            return True
        return self.capacity is not None and self._established + self._opening >= self.capacity

    def must_make_room(self) -> bool:
        """True when a stalled handshake waits behind a working connection.

        Such a server (one connection at a time) reaches the stalled one only
        when one of ours ends, so the pool retires a connection when it comes
        back idle instead of reusing it; the stalled one then joins.
        """
        return self._stalled > 0 and self._established > 0

    # health

    def ejected(self, now: float) -> bool:
        return self.state is ReplicaState.DOWN and (
            now < self.ejected_until or self.prober is not None
        )

    def needs_liveness_check(self, now: float, interval: float) -> bool:
        """True when nothing open here has proved the address alive for ``interval``.

        Open connections are watched (a server that goes away closes them,
        and the pool sees it at once); with none open, only a new connection
        can tell that the server still answers.
        """
        return (
            self.state is ReplicaState.UP
            and not self.stale
            and self._established == 0
            and self._opening == 0
            and self._stalled == 0
            and now - self.alive_at >= interval
        )

    def mark_up(self) -> bool:
        """Record a working connection; True if the address was down."""
        self.alive_at = time.monotonic()
        self.ever_up = True
        was_down = self.state is ReplicaState.DOWN
        self.state = ReplicaState.UP
        self.failures = 0
        self.last_error = None
        self.error_kind = None
        self.ejected_until = 0.0
        return was_down

    def mark_down(self, message: str, kind: str, *, auth: bool) -> float:
        """Eject the address with exponential backoff and jitter; returns the delay."""
        self.failures += 1
        base, cap = (AUTH_BACKOFF_BASE, AUTH_BACKOFF_CAP) if auth else (BACKOFF_BASE, BACKOFF_CAP)
        delay: float = min(cap, base * 2.0 ** (self.failures - 1))
        delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        self.ejected_until = time.monotonic() + delay
        self.last_error = f"{kind}: {message}"
        self.error_kind = kind
        self.state = ReplicaState.DOWN
        self.errors[kind] += 1
        return delay

    def forgettable(self) -> bool:
        """True for a stale address with nothing of its own left open."""
        return (
            self.stale
            and self._established == 0
            and self._opening == 0
            and self._stalled == 0
            and self.prober is None
        )

    def view(self, now: float) -> ReplicaView:
        view: ReplicaView = {
            "address": str(self.address),
            "state": self.state.value,
            "open": self._established,
            "idle": len(self.idle),
            "in_use": self._in_use,
            "draining": self._draining,
            "opening": self._opening,
            "stalled_handshakes": self._stalled,
            "capacity": self.capacity,
            "reuse": self.reuse.value,
            "calls": self.calls,
            "errors": dict(self.errors),
            "consecutive_failures": self.failures,
        }
        if self.source != self.address:
            view["resolved_from"] = str(self.source)
        if self.last_error:
            view["last_error"] = self.last_error
            view["error_kind"] = self.error_kind
        if self.state is ReplicaState.DOWN:
            view["retry_in_s"] = round(max(0.0, self.ejected_until - now), 3)
        if self.stale:
            view["stale"] = True
        return view
