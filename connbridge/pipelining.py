"""Pipelined connections: several requests in flight on one connection, answered in order.

The classic Listener loop (``recv``, compute, ``send``, repeat) reads its next
request from the socket buffer as soon as it has answered, so a client may
send several requests before the first reply: the replies come back in the
order of the requests. Across a network that turns one round trip per call
into one round trip per batch. This is only sound for a backend that
answers every message with exactly one reply, in order (``replies = "one"``):
a backend that answers twice, or not at all, would shift every later reply.

A :class:`Pipe` is the pool's record of one such connection (see
:meth:`connbridge.connection.Connection.start_pipelining`). The rule that a
reply never reaches the wrong caller holds because each request keeps its
place in the connection's queue until its reply arrives: a caller that times
out or goes away leaves its place taken, and its late reply is read and
dropped. A connection that breaks fails every request in flight on it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .connection import Connection

__all__ = ["Pipe"]

#: The replica type the pool records (generic to keep the imports one-way).
R = TypeVar("R")


class Pipe(Generic[R]):
    """One pipelined connection to one address."""

    __slots__ = ("closed", "conn", "created", "last_used", "replica", "retiring")

    def __init__(self, conn: Connection, replica: R, now: float) -> None:
        self.conn = conn
        self.replica = replica
        self.created = now
        self.last_used = now
        #: Takes no new requests; closed once the ones in flight are answered.
        self.retiring = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<Pipe {self.conn.address} in flight {self.in_flight}>"

    @property
    def in_flight(self) -> int:
        return self.conn.in_flight

    def has_room(self, depth: int) -> bool:
        return not self.retiring and not self.closed and self.conn.in_flight < depth
