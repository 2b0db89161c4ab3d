"""A pooled connection's holder, which owns its lifecycle, and the lease callers get.

A :class:`Holder` is the pool's record of one open connection. It knows its
own state (idle, in use, settling after a first reply, draining a late reply,
closed) and is the only code that moves the connection between them, keeping
its :class:`~connbridge.replica.Replica`'s counts in step. Every close goes
through :meth:`Holder.close` and is counted by its reason.

A :class:`Lease` is what :meth:`connbridge.pool.Pool.connection` hands out:
it forwards to the connection while the caller's block runs and refuses
every use after it (:class:`~connbridge.errors.LeaseReleased`), so a caller
that kept the object cannot send on a connection another caller now holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from enum import Enum
from typing import Any, Protocol

from .addresses import Address
from .connection import Connection
from .errors import ConnbridgeError, LeaseReleased
from .replica import Replica, Reuse

__all__ = ["Holder", "HolderState", "Lease"]

logger = logging.getLogger("connbridge.pool")


class HolderState(Enum):
    IDLE = "idle"
    IN_USE = "in use"
    SETTLING = "settling"  # after a reply, waiting to see whether more input follows
    DRAINING = "draining"
    CLOSED = "closed"


class Owner(Protocol):
    """What a holder needs from its pool."""

    name: str

    @property
    def drain_timeout(self) -> float: ...

    @property
    def max_draining(self) -> int: ...

    @property
    def settle_time(self) -> float: ...

    @property
    def single_use(self) -> bool: ...

    @property
    def quiet_check_interval(self) -> float: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def count_close(self, reason: str) -> None: ...

    def count_violation(self, replica: Replica[Holder]) -> None: ...

    def reuse_ended(self, replica: Replica[Holder]) -> None: ...

    def count_discarded(self, frames: int) -> None: ...

    def came_back(self, holder: Holder) -> None: ...

    def slot_freed(self) -> None: ...


class Holder:
    """One pooled connection and what the pool knows about it."""

    __slots__ = (
        "_budgeted",
        "_owner",
        "conn",
        "created",
        "exchanges",
        "last_used",
        "parked",
        "quiet_at",
        "replica",
        "state",
    )

    def __init__(
        self, conn: Connection, replica: Replica[Holder], owner: Owner, now: float
    ) -> None:
        self.conn = conn
        self.replica = replica
        self._owner = owner
        self.created = now
        self.last_used = now
        #: Exchanges completed on it (a failure on the first one says more).
        self.exchanges = 0
        #: True while it sits in its replica's idle list (not handed to a waiter).
        self.parked = False
        #: When it last sat through a quiet check (never: its first reply settles).
        self.quiet_at = -1e9 if replica.reuse is Reuse.UNPROVEN else now
        self.state = HolderState.IN_USE  # a new connection is handed out or offered
        self._budgeted = False
        replica.checked_out()

    def __repr__(self) -> str:
        return f"<Holder {self.replica.address} {self.state.value}>"

    @property
    def spent(self) -> bool:
        """It carried an exchange on an address whose connections carry one each.

        Such a connection may still hold a reply shifted by its backend, so it
        never goes to another caller, whatever path brings it back: a release,
        the end of a settle or of a drain, or a hand-over made before reuse ended.
        """
        return self.exchanges > 0 and self.replica.reuse is Reuse.NEVER

    # checkout

    def check_out(self) -> None:
        """An idle connection goes to a caller: stop watching it for stray input."""
        assert self.state is HolderState.IDLE, self.state
        self.conn.watch(None)
        self.state = HolderState.IN_USE
        self.replica.checked_out()

    def park(self) -> None:
        """An in-use connection becomes idle: watch it, so stray input is seen at once."""
        assert self.state is HolderState.IN_USE, self.state
        self.replica.released()
        self.state = HolderState.IDLE
        self.last_used = time.monotonic()
        self.conn.watch(self._idle_input)

    # after an exchange

    def exchange_done(self, *, provable_end: bool = False) -> None:
        """The caller got its reply: reuse, settle or close the connection.

        On a backend that may answer a message several times (``replies =
        "many"``) it is closed, so no later reply can reach a later caller,
        unless the caller read a stream of replies to a ``provable_end`` (a
        sentinel, a count). Otherwise input already pending after the reply
        is a further reply: a violation.
        """
        conn = self.conn
        replica = self.replica
        self.exchanges += 1
        single_use = self._owner.single_use and not provable_end
        if conn.has_pending_input():
            if conn.peer_closed and not conn.has_unread_data():
                self._learn_one_shot()
            elif not single_use:
                self._violation()
            else:
                self.close("single_use")
            return
        now = replica.alive_at = time.monotonic()
        if single_use or self.spent:
            self.close("single_use")
        elif (
            replica.reuse is Reuse.UNPROVEN
            or now - self.quiet_at >= self._owner.quiet_check_interval
        ):
            self._settle()
        else:
            self._owner.came_back(self)

    def _settle(self) -> None:
        """Keep the connection out of use for ``settle_time``; reuse it if all stays quiet.

        This is how the pool learns, on an address's first replies, whether
        its server closes after each reply or sends more than one, before any
        second request could meet that input. Later, each connection settles
        again once per ``quiet_check_interval``: under steady load a
        connection is never idle, so without these checks a backend that
        answers some message twice would shift every later reply on it
        unseen.
        """
        self.state = HolderState.SETTLING
        self.replica.settle_started()
        self.conn.watch(self._settling_input)
        asyncio.get_running_loop().call_later(self._owner.settle_time, self._settled)

    def _settled(self) -> None:
        if self.state is not HolderState.SETTLING:
            return
        self.replica.settle_ended()
        self.conn.watch(None)
        self.quiet_at = time.monotonic()
        if self.replica.reuse is Reuse.UNPROVEN:
            self.replica.reuse = Reuse.PROVEN
        self.state = HolderState.IN_USE
        self._owner.came_back(self)

    def _settling_input(self) -> None:
        if self.state is not HolderState.SETTLING:
            return
        self.replica.settle_ended()
        self.state = HolderState.IN_USE
        self.conn.watch(None)
        if self.conn.has_unread_data():
            self._violation()
        else:
            self._learn_one_shot()

    def _idle_input(self) -> None:
        if self.state is not HolderState.IDLE:
            return
        self.conn.watch(None)
        if self.conn.has_unread_data():
            self._violation()
        else:
            self.close("idle_eof")

    def _learn_one_shot(self) -> None:
        """The server closed right after its reply: it serves one exchange per connection."""
        replica = self.replica
        if replica.reuse is not Reuse.NEVER:
            replica.reuse = Reuse.NEVER
            logger.info(
                "backend %s: %s closes each connection after one reply; "
                "each call now gets a connection of its own",
                self._owner.name,
                replica.address,
            )
        self.close("one_shot")
        self._owner.reuse_ended(replica)

    def _violation(self) -> None:
        """A frame nobody asked for: the server answers some messages more than once."""
        replica = self.replica
        if replica.reuse is not Reuse.NEVER:
            replica.reuse = Reuse.NEVER
            logger.warning(
                'backend %s: %s sent a reply nobody asked for (replies = "one" broken); '
                'its connections are no longer reused. Declare replies = "many" for '
                "a backend that may answer a message more than once.",
                self._owner.name,
                replica.address,
            )
        self._owner.count_violation(replica)
        self.close("stray_reply")
        self._owner.reuse_ended(replica)

    # abandoned exchanges

    def drain(self) -> None:
        """Read the late reply of an abandoned exchange, then reuse or close the connection."""
        assert self.state is HolderState.IN_USE, self.state
        self.state = HolderState.DRAINING
        self._budgeted = self.replica.drain_started(self._owner.max_draining)
        if self._budgeted:
            self._owner.slot_freed()
        self._owner.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._owner.drain_timeout):
                await self.conn.recv_bytes()
        except (TimeoutError, ConnbridgeError):
            self.close("drain_failed")
            return
        except asyncio.CancelledError:
            self.close("shutdown", abort=True)
            raise
        if self.state is not HolderState.DRAINING:
            return
        self.replica.drain_ended(self._budgeted)
        self._budgeted = False
        self.replica.checked_out()
        self.state = HolderState.IN_USE
        # The late reply was the one owed; anything after it is a violation.
        self.exchange_done()

    # closing

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Take the connection out of service and close it gently in the background.

        Closing sends EOF and waits for the server's (up to ``drain_timeout``),
        so a server still computing a reply can send it (it is discarded)
        instead of meeting a reset. ``abort`` drops it at once instead (only
        when the pool's own shutdown grace has run out). Counted under
        ``reason``. Never awaits.
        """
        state = self.state
        if state is HolderState.CLOSED:
            return
        self.state = HolderState.CLOSED
        replica = self.replica
        if state is HolderState.IDLE:
            if self.parked:
                self.parked = False
                replica.idle.remove(self)
        elif state is HolderState.DRAINING:
            replica.drain_ended(self._budgeted)
        else:
            replica.released()
        replica.closed()
        self.conn.watch(None)
        owner = self._owner
        owner.count_close(reason)
        if abort:
            self.conn.abort()
            replica.close_finished()
        else:
            owner.spawn(self._close_gently())
        owner.slot_freed()

    async def _close_gently(self) -> None:
        conn = self.conn
        try:
            await conn.close(timeout=self._owner.drain_timeout)
        finally:
            self.replica.close_finished()
            if conn.discarded_frames:
                self._owner.count_discarded(conn.discarded_frames)


class Lease:
    """A connection checked out with :meth:`Pool.connection`, valid inside its block only.

    It offers the exchange methods of :class:`~connbridge.connection.Connection`;
    after the block ends each raises :class:`~connbridge.errors.LeaseReleased`.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn

    def __repr__(self) -> str:
        return f"<Lease {self._conn!r}>" if self._conn else "<Lease released>"

    def _live(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise LeaseReleased(
                "this connection went back to the pool when its `async with` block ended"
            )
        return conn

    def end(self) -> Connection:
        """End the lease (the pool calls this); returns the connection it wrapped."""
        conn = self._live()
        self._conn = None
        return conn

    @property
    def released(self) -> bool:
        return self._conn is None

    @property
    def address(self) -> Address:
        return self._live().address

    @property
    def peer_dialect(self) -> str | None:
        return self._live().peer_dialect

    def has_pending_input(self) -> bool:
        return self._live().has_pending_input()

    async def send(self, obj: object) -> None:
        await self._live().send(obj)

    async def recv(self) -> object:
        return await self._live().recv()

    async def send_bytes(
        self, data: bytes | bytearray | memoryview, *, deadline: float | None = None
    ) -> None:
        await self._live().send_bytes(data, deadline=deadline)

    async def recv_bytes(self, *, deadline: float | None = None) -> bytes:
        return await self._live().recv_bytes(deadline=deadline)
