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

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Generic, Protocol, TypeVar

from .connection import Connection, expire
from .errors import ConnbridgeError, ConnectionClosed, PoolClosed
from .pool_settings import PoolSettings

__all__ = ["Pipe", "PipeOwner", "PipeReplica", "Pipelines"]

logger = logging.getLogger("connbridge.pool")


class PipeReplica(Protocol):
    """What a pipe needs of the address it goes to (a :class:`~connbridge.replica.Replica`)."""

    @property
    def stale(self) -> bool: ...

    @property
    def stalled(self) -> int: ...

    def closed(self) -> None: ...

    def close_finished(self) -> None: ...


#: The replica type the pool records (generic to keep the imports one-way).
R = TypeVar("R", bound=PipeReplica)


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


class PipeOwner(Protocol[R]):
    """What :class:`Pipelines` needs from its pool."""

    name: str
    settings: PoolSettings

    @property
    def closed(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def count_close(self, reason: str) -> None: ...

    def count_violation(self, replica: R) -> None: ...

    def reserve_opening(self) -> R | None: ...

    async def connect_pooled(self, replica: R) -> Connection: ...

    def has_hope(self) -> bool: ...

    def unavailable(self) -> ConnbridgeError: ...

    def exhausted(self, limit: float) -> ConnbridgeError: ...

    def overloaded(self, waiting: int) -> ConnbridgeError: ...

    def note_wait(self, seconds: float) -> None: ...

    def note_opened(self) -> None: ...

    def note_released(self) -> None: ...


class Pipelines(Generic[R]):
    """The pool's pipelined connections and the callers waiting for room on one.

    It owns the pipes and their lifecycle: opening one when every open pipe
    is full, handing each request to the pipe with the fewest in flight,
    retiring a pipe so that a silent handshake can join (a server that
    serves one connection at a time), closing idle and old ones, and
    turning pipelining off for good at the first stray reply.
    """

    def __init__(self, owner: PipeOwner[R], depth: int) -> None:
        self._owner = owner
        #: Requests in flight per pipe; 1 means off (the pool's usual path).
        self.depth = depth
        self.pipes: list[Pipe[R]] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._running: asyncio.AbstractEventLoop | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        # Kept once known: asyncio.get_running_loop() costs a system call on 3.11.
        loop = self._running
        if loop is None:
            loop = self._running = asyncio.get_running_loop()
        return loop

    @property
    def on(self) -> bool:
        return self.depth > 1

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.pipes)

    async def submit(
        self, data: bytes, deadline: float, budget: float
    ) -> tuple[Pipe[R], asyncio.Future[bytes]]:
        """Wait for room on a pipe (within the acquire limit), then send ``data`` there.

        Returns the pipe and the future of the reply. Raises what the pool's
        acquiring raises: :class:`~connbridge.errors.PoolClosed`,
        ``AcquireTimeout`` (never sent), ``BackendUnavailable``,
        ``PoolOverloaded``.
        """
        owner = self._owner
        loop = self._loop
        started = loop.time()
        acquire_timeout = owner.settings.acquire_timeout
        acquire_deadline = min(deadline, started + acquire_timeout)
        waited = False
        try:
            while True:
                if owner.closed:
                    raise PoolClosed(f"pool {owner.name} is closed")
                pipe = self._roomiest()
                if pipe is not None:
                    conn = pipe.conn
                    if conn.writing_paused:
                        try:
                            await conn.wait_writable(acquire_deadline)
                        except TimeoutError:
                            raise owner.exhausted(budget) from None
                        continue  # look again: the pipe may be gone or full meanwhile
                    try:
                        return pipe, conn.submit(data)
                    except ConnectionClosed:
                        self.gone(pipe)  # nothing was sent: another pipe may do
                        continue
                self.grow()
                if not owner.has_hope():
                    raise owner.unavailable()
                if len(self._waiters) >= owner.settings.max_waiters:
                    raise owner.overloaded(len(self._waiters))
                waited = True
                await self._wait_for_room(acquire_deadline, budget, deadline, acquire_timeout)
        finally:
            if waited:
                owner.note_wait(loop.time() - started)

    async def _wait_for_room(
        self, until: float, budget: float, deadline: float, acquire_timeout: float
    ) -> None:
        room: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(room)
        timer = self._loop.call_at(until, expire, room)
        try:
            await room
        except TimeoutError:
            limit = budget if until >= deadline else acquire_timeout
            raise self._owner.exhausted(limit) from None
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(room)

    async def wait_ready(self, timeout: float) -> None:
        """Open a pipe if none is open and wait up to ``timeout`` for one (readiness)."""
        if self.pipes:
            return
        self.grow()
        with contextlib.suppress(ConnbridgeError):
            until = self._loop.time() + timeout
            await self._wait_for_room(until, timeout, until, timeout)

    def _roomiest(self) -> Pipe[R] | None:
        """The usable pipe with the fewest requests in flight, if one has room.

        Calls spread over the open pipes; a new pipe opens only when every
        open one is full (see :meth:`grow`), which keeps the count of
        connections low for servers that serve one at a time.
        """
        depth = self.depth
        best: Pipe[R] | None = None
        for pipe in self.pipes:
            if (
                pipe.has_room(depth)
                and not pipe.replica.stale
                and (best is None or pipe.in_flight < best.in_flight)
            ):
                best = pipe
        return best

    def grow(self) -> None:
        """Open one more pipe where an address has room for a connection."""
        owner = self._owner
        if owner.closed:
            return
        replica = owner.reserve_opening()
        if replica is not None:
            owner.spawn(self._open(replica))

    async def _open(self, replica: R) -> None:
        owner = self._owner
        try:
            conn = await owner.connect_pooled(replica)
        except (ConnbridgeError, OSError) as exc:
            logger.debug("backend %s: opening a pipelined connection failed: %s", owner.name, exc)
            self._wake()
            return
        self.adopt(conn, replica)

    def adopt(self, conn: Connection, replica: R) -> None:
        """A new authenticated connection (counted as established) becomes a pipe."""
        owner = self._owner
        loop = self._loop
        pipe: Pipe[R] = Pipe(conn, replica, loop.time())

        def answered() -> None:
            pipe.last_used = loop.time()
            if conn.closed:
                self.gone(pipe)
            elif pipe.retiring and pipe.in_flight == 0:
                self.close(pipe, "make_room" if replica.stalled else "retired")
            else:
                self._wake(1)

        def stray() -> None:
            if pipe.in_flight:
                return
            if conn.has_unread_data():
                self._violation(pipe)
            else:
                self.gone(pipe)

        conn.start_pipelining(answered)
        conn.watch(stray)
        self.pipes.append(pipe)
        owner.note_opened()
        if owner.closed:
            self.close(pipe, "shutdown")
            return
        if replica.stalled:
            self.retire_one(replica)
        self._wake()

    def _violation(self, pipe: Pipe[R]) -> None:
        """A frame nobody asked for: the backend breaks pipelining's contract; stop for good."""
        owner = self._owner
        owner.count_violation(pipe.replica)
        logger.warning(
            "backend %s: %s sent a reply nobody asked for; pipelining is turned off and "
            "its connections are no longer reused",
            owner.name,
            pipe.conn.address,
        )
        self.depth = 1
        self.close(pipe, "stray_reply")
        for other in list(self.pipes):
            other.retiring = True
            if other.in_flight == 0:
                self.close(other, "no_reuse")

    def retire_one(self, replica: R) -> None:
        """A silent handshake waits behind our pipes: let the least busy one of them end."""
        mine = [p for p in self.pipes if p.replica is replica and not p.retiring]
        pipe = min(mine, key=lambda p: p.in_flight, default=None)
        if pipe is None:
            return
        pipe.retiring = True
        if pipe.in_flight == 0:
            self.close(pipe, "make_room")

    def retire_all(self) -> None:
        """Shutdown: no new request goes to a pipe; each closes once answered."""
        for pipe in list(self.pipes):
            pipe.retiring = True
            if pipe.in_flight == 0:
                self.close(pipe, "shutdown")

    def gone(self, pipe: Pipe[R]) -> None:
        """The server closed a pipelined connection (its calls in flight failed)."""
        self.close(pipe, "idle_eof" if pipe.in_flight == 0 else "error")

    def close(self, pipe: Pipe[R], reason: str) -> None:
        """Take a pipe out of service and close it gently; counted under ``reason``."""
        if pipe.closed:
            return
        pipe.closed = True
        owner = self._owner
        with contextlib.suppress(ValueError):
            self.pipes.remove(pipe)
        pipe.conn.watch(None)
        pipe.replica.closed()
        owner.count_close(reason)
        owner.spawn(self._close_gently(pipe))
        owner.note_released()
        self._wake()

    async def _close_gently(self, pipe: Pipe[R]) -> None:
        try:
            await pipe.conn.close(timeout=self._owner.settings.drain_timeout)
        finally:
            pipe.replica.close_finished()

    def close_all(self, reason: str) -> None:
        for pipe in list(self.pipes):
            self.close(pipe, reason)

    def housekeep(self, now: float) -> None:
        """Close pipes with nothing in flight that are too old, idle, stale or in the way."""
        settings = self._owner.settings
        for pipe in list(self.pipes):
            if pipe.in_flight:
                continue
            replica = pipe.replica
            if now - pipe.created > settings.max_lifetime:
                self.close(pipe, "lifetime")
            elif now - pipe.last_used > settings.idle_timeout:
                self.close(pipe, "idle")
            elif replica.stale:
                self.close(pipe, "stale")
            elif replica.stalled:
                self.close(pipe, "make_room")

    def _wake(self, count: int | None = None) -> None:
        woken = 0
        for room in self._waiters:
            if not room.done():
                room.set_result(None)
                woken += 1
                if count is not None and woken >= count:
                    return
