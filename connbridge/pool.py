"""A bounded, self-healing pool of connections to one backend.

The rule this pool lives by: **a reply never reaches the wrong caller.** A
connection whose exchange timed out, was cancelled or failed is never handed
to another caller while a reply to the old exchange may still arrive. After a
timeout or a cancellation the connection is kept while a background task
reads the late reply (the *drain*); only then is it reused. It is closed if
the drain itself times out, and always when its state is unknown (a broken
frame, a protocol error).

The protocol has no request ids, so the rule also needs each message to get
exactly one reply. A backend declares which kind it is (``replies``):

* ``"one"`` (the default): every message gets exactly one reply. The pool
  keeps a watch on every idle connection, so a frame nobody asked for is seen
  the moment it arrives; it is a violation: the connection is closed, the
  address's connections are no longer reused (each call gets a connection of
  its own) and a warning is logged. Before an address's connections are
  reused at all, a connection's first reply must be followed by a quiet
  ``settle_time``: a server that closes after each reply (a manager's
  server-level requests, one-shot servers) or answers twice is thus found
  before any second request meets it. A backend that breaks the rule later
  can misroute a reply only until its first stray frame is seen.
* ``"many"``: a message may get several replies. Each call then gets a
  connection of its own, closed gently after the first reply, so no reply can
  ever reach a later caller.

How the pool treats the servers it talks to:

* **One-connection-at-a-time servers.** Most hand-written Listeners accept a
  connection, serve it until EOF, then accept the next. A second connection
  is accepted by the kernel but its handshake stays silent. The pool opens
  new connections one at a time per address, and when a handshake stays
  silent past ``handshake_timeout`` while other connections to that address
  work, it learns that the address serves only that many connections
  (``capacity`` in the statistics) and stops opening more; the capacity
  stays learned. The silent connection is never closed by the pool while it
  runs: closing a connection that such a server will accept later makes its
  ``accept()`` fail, which kills the classic server. Instead, the next
  working connection that comes back idle is retired gently, the server
  reaches the silent one, its handshake completes and it joins the pool. On
  shutdown every silent handshake is unwound the same way within the grace
  period. A session (:meth:`Pool.open_dedicated`) on an address whose
  capacity is taken raises :class:`~connbridge.errors.BackendBusy` at once.
* **Fragile servers.** Connections are closed with a clean EOF (and we wait
  for the server's EOF before closing the socket), late replies are drained
  rather than cut off, and after a wrong key the address backs off for a
  long time instead of retrying, since each attempt may kill such a server.
* **Abandoned calls.** A drain does not take one of the ``max_connections``
  call slots, up to ``max_draining`` drains per address; past that, a drain
  keeps its slot (the pool never cuts a drain short, which could kill a
  fragile server), and a caller that gets no connection within its time gets
  :class:`~connbridge.errors.AcquireTimeout` with the counts in use and
  draining. Where a capacity was learned, drains count against it: such a
  server is busy with the abandoned request.
* **Readiness.** An open connection is watched, so a server that goes away
  is seen at once. An address with no connection open that proved it alive
  within ``readiness_interval`` gets a real, authenticated connection, closed
  cleanly right after (or handed to a caller waiting meanwhile): a dead
  backend is marked down with no call made, and :attr:`Pool.ready` stays
  true to the facts. Without an authkey, a new connection first waits
  ``settle_time`` for a challenge the server may send unprompted: such a
  server needs an authkey, and a request would be read as a wrong answer.
* **Replicas.** A backend may have several addresses, and a host name may
  resolve to several IPs (re-resolved every ``dns_interval`` seconds: this is
  how a headless Kubernetes Service fans out). An IP the name no longer
  lists takes no new calls; its idle connections close, calls in flight
  finish, and then it is forgotten. Calls go to the healthy address with the
  fewest calls in flight. An address that fails is ejected with exponential
  backoff and jitter; a background probe reconnects to it before it takes
  calls again. When every address is down, callers get
  :class:`~connbridge.errors.BackendUnavailable` at once.
* **Retries.** A call is retried on another connection only when it provably
  never reached the backend: an idle connection that shows EOF or stray bytes
  at checkout is dropped silently, and a refused connect only ejects the
  address. A request that may have been delivered is never sent twice; if the
  connection breaks mid-call the caller gets
  :class:`~connbridge.errors.CallInterrupted`.

Per-address state and its transitions live in :mod:`connbridge.replica`; a
connection's own lifecycle (reuse, settle, drain, close) in
:mod:`connbridge.holder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, TypedDict

from .addresses import Address, AddressLike, parse_address
from .connection import Connection, expire, open_connection
from .errors import (
    AcquireTimeout,
    AuthenticationError,
    BackendBusy,
    BackendUnavailable,
    CallInterrupted,
    CallTimeout,
    ConnbridgeError,
    ConnectionClosed,
    HandshakeError,
    HandshakeTimeout,
    PoolClosed,
    PoolOverloaded,
    ProtocolError,
)
from .handshake import CHALLENGE
from .holder import Holder, HolderState, Lease
from .pipelining import Pipelines
from .pool_settings import PoolSettings
from .replica import BACKOFF_BASE, Replica, ReplicaState, ReplicaView, Reuse
from .streaming import ReplyStream
from .unpickler import make_dumps, make_loads

__all__ = ["Lease", "Pool", "PoolHealth", "PoolSettings", "PoolStats", "ReplyStream"]

logger = logging.getLogger(__name__)

# Replies larger than this are unpickled in a worker thread.
_LOAD_IN_THREAD = 256 * 1024
# How often the housekeeping task looks for idle and expired connections.
_HOUSEKEEPING_INTERVAL = 1.0
# Failed tries after which an address of a host name that never answered is
# set aside, while another address of that name works (a dual-stack name
# with a server on one family only).
_DORMANT_AFTER = 3
#: Error kinds of a failed handshake: a wrong key, or a malformed exchange. Not
#: "handshake_timeout": a silent handshake is as likely a one-connection server
#: busy with another client as a Listener without a key, and the busy server
#: must not be reported as an authentication failure.
_HANDSHAKE_KINDS: Final = frozenset({"auth", "handshake"})


class PoolHealth(TypedDict, total=False):
    """What :meth:`Pool.health` reports."""

    status: str
    addresses: list[ReplicaView]
    error: str


class PoolStats(TypedDict):
    """What :meth:`Pool.stats` reports (JSON-able)."""

    name: str
    open: int
    idle: int
    in_use: int
    draining: int
    opening: int
    stalled_handshakes: int
    waiters: int
    opened: int
    calls: int
    errors: dict[str, int]
    violations: int
    discarded_replies: int
    waits: int
    wait_time_total_s: float
    wait_time_max_s: float
    closed: dict[str, int]
    dedicated_opened: int
    max_connections_per_address: int
    addresses: list[ReplicaView]


class Pool:
    """Connections to one backend (one or more addresses), shared by many callers.

    ``await pool.start()`` first; then ``await pool.call(obj)`` or
    ``async with pool.connection() as lease``; finally ``await pool.close()``.

    ``substitutes`` adds stand-ins to the unpickler's table (see
    :func:`~connbridge.unpickler.make_loads`). ``prepare`` is awaited once
    on every pooled connection right after its handshake, before any call
    (a manager's connections are switched to serving objects this way); it
    is bounded by ``handshake_timeout``, and a connection it fails on is
    closed and its address marked down.
    """

    def __init__(
        self,
        addresses: AddressLike | Sequence[AddressLike],
        *,
        authkey: bytes | None,
        settings: PoolSettings | None = None,
        name: str = "default",
        substitutes: Mapping[str, object] | None = None,
        prepare: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        items: Sequence[AddressLike] = (
            [addresses] if isinstance(addresses, str | tuple | Address) else addresses
        )
        configured = tuple(parse_address(a) for a in items)
        if not configured:
            raise ValueError("a pool needs at least one address")
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey must be bytes or None")
        self.name = name
        self.addresses = configured
        self.settings = settings or PoolSettings()
        self._authkey = authkey
        s = self.settings
        self._loads = make_loads(
            s.allowlist,
            encoding=s.py2_encoding,
            max_depth=s.pickle_max_depth,
            max_nodes=s.pickle_max_nodes,
            max_hashed_nodes=s.pickle_max_hashed_nodes,
            work_per_byte=s.pickle_work_per_byte,
            substitutes=substitutes,
        )
        self._prepare = prepare
        self._dumps = make_dumps(self.settings.pickle_protocol)
        self._replicas: dict[str, Replica[Holder]] = {}
        self._waiters: deque[asyncio.Future[Holder | None]] = deque()
        # Pipelining (settings.pipeline > 1): the pipelined connections, and
        # callers waiting for room on one.
        self._pipelines: Pipelines[Replica[Holder]] = Pipelines(
            self, self.settings.pipeline if self.settings.replies == "one" else 1
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._started = False
        # Set by start(): asyncio.get_running_loop() costs a getpid() system
        # call per use on Python 3.11, which showed in profiles of call().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resolved_at = -1e9
        self._resolve_error: str | None = None
        # Resolved addresses set aside (see _DORMANT_AFTER), by key.
        self._dormant: set[str] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._released = asyncio.Event()
        # statistics
        self._calls = 0
        self._errors: Counter[str] = Counter()
        self._closed_by: Counter[str] = Counter()
        self._violations = 0
        self._discarded = 0
        self._opened = 0
        self._waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._dedicated = 0

    def __repr__(self) -> str:
        return f"<Pool {self.name} {[str(a) for a in self.addresses]}>"

    # what holders need (connbridge.holder.Owner)

    @property
    def drain_timeout(self) -> float:
        return self.settings.drain_timeout

    @property
    def max_draining(self) -> int:
        return self.settings.max_draining

    @property
    def settle_time(self) -> float:
        return self.settings.settle_time

    @property
    def single_use(self) -> bool:
        return self.settings.replies == "many"

    @property
    def quiet_check_interval(self) -> float:
        return self.settings.quiet_check_interval

    def reuse_ended(self, replica: Replica[Holder]) -> None:
        """An address's connections are no longer reused: close its idle ones now.

        They may hold replies shifted by the same backend; those in use are
        closed when their exchange ends.
        """
        while replica.idle:
            replica.idle[0].close("no_reuse")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the pool tracks (and ends on :meth:`close`)."""
        task: asyncio.Task[Any] = (self._loop or asyncio.get_running_loop()).create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def count_close(self, reason: str) -> None:
        self._closed_by[reason] += 1

    def count_discarded(self, frames: int) -> None:
        self._discarded += frames

    def count_violation(self, replica: Replica[Holder]) -> None:
        """A stray reply from ``replica``: its connections are no longer reused."""
        replica.reuse = Reuse.NEVER
        self._violations += 1
        replica.errors["stray_reply"] += 1

    def came_back(self, holder: Holder) -> None:
        """A connection with no exchange pending: hand it on, park it, or retire it.

        Never awaits, so it is safe under cancellation.
        """
        replica = holder.replica
        self._released.set()
        if self._closed or replica.stale:
            holder.close("shutdown" if self._closed else "stale")
        elif holder.spent:
            holder.close("no_reuse")  # reuse ended while it settled
        elif replica.must_make_room():
            # A one-connection-at-a-time server holds a silent handshake back
            # until one of ours ends: end this one so that one can join.
            holder.close("make_room")
        elif replica.capacity is not None and replica.established > replica.capacity:
            holder.close("surplus")
        else:
            holder.park()
            self._offer(holder)

    def slot_freed(self) -> None:
        self._released.set()
        self._grow()

    # lifecycle

    async def start(self) -> None:
        """Resolve the addresses and open one connection, so configuration
        errors show at start-up. A backend that is down does not make this
        fail: the address is ejected and probed in the background.
        """
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        await self._resolve()
        self._housekeeper = self._loop.create_task(self._housekeeping())
        replicas = self._live_replicas()
        if replicas:
            if self._pipelines.on:
                self._pipelines.grow()
                await self._pipelines.wait_ready(self.settings.connect_timeout)
            else:
                # Waited on, not awaited: a cancelled start must not cut it.
                await asyncio.wait({self._open_soon(replicas[0], reason="start-up")})

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish within ``grace``
        seconds, then close every connection cleanly (the backends see EOF).

        A silent handshake (a one-connection-at-a-time server busy with one
        of ours) is unwound within the grace too: the working connections
        close first, the server reaches the silent one, its handshake
        completes, and then it is closed cleanly as well.
        """
        if self._closed:
            return
        self._closed = True
        grace = self.settings.close_grace if grace is None else grace
        self._fail_waiters(PoolClosed(f"pool {self.name} is closed"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for replica in self._replicas.values():
            if replica.prober is not None:
                replica.prober.cancel()
        pipelines = self._pipelines
        pipelines.retire_all()
        while loop.time() < deadline:
            self._close_idle("shutdown")
            if not pipelines.in_flight and not any(r.busy for r in self._replicas.values()):
                break
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.05, max(0.0, deadline - loop.time()))):
                    await self._released.wait()
        self._close_idle("shutdown")
        pipelines.close_all("shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        # What is left past the grace is cancelled; its connections are aborted.
        for _ in range(3):
            if not self._tasks:
                break
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # calls

    async def call(self, obj: object, *, timeout: float | None = None) -> object:
        """Send ``obj`` and return the backend's reply (one send, one receive).

        ``timeout`` (default ``call_timeout``) bounds the whole call, waiting
        for a connection included. Raises :class:`CallTimeout` (the backend
        had the request), :class:`AcquireTimeout` (no connection became free
        in time: the backend never saw the request), :class:`CallInterrupted`
        (the backend may or may not have processed the request),
        :class:`BackendUnavailable`, :class:`PoolOverloaded`,
        :class:`PoolClosed`, and the codec's
        :class:`~connbridge.errors.PickleError` (for the request, or a reply
        the allowlist refuses). A reply that is an exception object is
        returned, not raised.
        """
        data = self._dumps(obj)
        loop = self._loop or asyncio.get_running_loop()
        budget = self.settings.call_timeout if timeout is None else timeout
        deadline = loop.time() + budget
        holder: Holder | None = None
        if self._pipelines.on:
            pipe, answer = await self._pipelines.submit(data, deadline, budget)
            replica = pipe.replica
        else:
            holder = await self._acquire(deadline, budget)
            replica = holder.replica
        replica.calls += 1
        self._calls += 1
        try:
            if holder is None:
                # Pipelined: the request keeps its place in the queue until
                # its reply comes, whatever happens to this caller.
                timer = loop.call_at(deadline, expire, answer)
                try:
                    reply = await answer
                finally:
                    timer.cancel()
            else:
                # The whole frame is handed to the transport before the first
                # await, so from here on the request counts as delivered.
                await holder.conn.send_bytes(data, deadline=deadline)
                reply = await holder.conn.recv_bytes(deadline=deadline)
        except TimeoutError:
            if holder is not None:
                self._abandon(holder)
            self._count_error(replica, "timeout")
            raise CallTimeout(
                f"backend {self.name} ({replica.address}) did not answer within {budget} s"
            ) from None
        except ConnectionClosed as exc:
            hint = ""
            if holder is not None:
                holder.close("error")
                hint = self._protocol_hint(holder)
            self._count_error(replica, "interrupted")
            raise CallInterrupted(
                f"backend {self.name} ({replica.address}) closed the connection during "
                "the call; it may or may not have processed the request" + hint
            ) from exc
        except ProtocolError:
            if holder is not None:
                holder.close("error")
            self._count_error(replica, "protocol")
            raise
        except BaseException:
            # Cancelled (the caller went away) after the request was written:
            # the reply may still come, so drain it before any reuse.
            if holder is not None:
                self._abandon(holder)
            self._count_error(replica, "cancelled")
            raise
        if holder is not None:
            holder.exchange_done()
        try:
            if len(reply) > _LOAD_IN_THREAD:
                # Checking and loading a large pickle takes milliseconds to
                # seconds: off the event loop, so other calls go on meanwhile.
                return await asyncio.to_thread(self._loads, reply)
            return self._loads(reply)
        except ConnbridgeError:
            self._count_error(replica, "pickle")
            raise

    def _protocol_hint(self, holder: Holder) -> str:
        """Why a server may drop a connection at its first request, when we can tell."""
        protocol = self.settings.pickle_protocol
        if holder.exchanges == 0 and holder.conn.peer_dialect == "legacy" and protocol > 2:
            return (
                f". The server used the legacy handshake, as Python 2 and <= 3.11 do; a "
                f"Python 2 server cannot read pickle protocol {protocol}: set "
                "pickle_protocol = 2 for this backend"
            )
        return ""

    @contextlib.asynccontextmanager
    async def stream(
        self, obj: object, *, timeout: float | None = None, max_reply_bytes: int | None = None
    ) -> AsyncIterator[ReplyStream]:
        """Send ``obj`` once and read the backend's replies as they come (a :class:`ReplyStream`).

        ``timeout`` (default ``call_timeout``) bounds the whole stream,
        waiting for a connection included; ``max_reply_bytes`` (default
        ``max_frame``) each reply, from its header. If the block ends after
        :meth:`ReplyStream.finish` (the caller read a provable last reply)
        with nothing more pending, the connection goes back to the pool, as
        after a call; in every other case (a silent gap, the deadline, the
        backend closing, an error, the caller going away) more replies may
        follow, so it is closed gently and what still comes is discarded.
        Raises what :meth:`call` raises before the stream starts.
        """
        data = self._dumps(obj)
        loop = self._loop or asyncio.get_running_loop()
        budget = self.settings.call_timeout if timeout is None else timeout
        deadline = loop.time() + budget
        holder = await self._acquire(deadline, budget)
        conn = holder.conn
        replica = holder.replica
        replica.calls += 1
        self._calls += 1
        if max_reply_bytes is not None:
            conn.limit_frames(min(max_reply_bytes, self.settings.max_frame))
        try:
            await conn.send_bytes(data, deadline=deadline)
        except TimeoutError:
            self._abandon(holder)
            self._count_error(replica, "timeout")
            raise CallTimeout(
                f"backend {self.name} ({replica.address}) took the request too slowly"
            ) from None
        except ConnectionClosed as exc:
            holder.close("error")
            self._count_error(replica, "interrupted")
            raise CallInterrupted(
                f"backend {self.name} ({replica.address}) closed the connection"
            ) from exc
        except BaseException:
            self._abandon(holder)
            raise
        replies = ReplyStream(conn, self._loads, deadline, loop)
        try:
            yield replies
        except BaseException:
            holder.close("stream_error")
            raise
        conn.limit_frames(None)
        if replies.finished and not conn.closed:
            holder.exchange_done(provable_end=True)
        else:
            holder.close("stream_end")

    # what the pipelines need (connbridge.pipelining.PipeOwner)

    def reserve_opening(self) -> Replica[Holder] | None:
        """The least loaded address where one more connection may open, its slot reserved.

        Reserved now, so that concurrent callers see it; the caller then
        connects with :meth:`connect_pooled`.
        """
        limit = self.settings.max_connections
        candidates = [r for r in self._live_replicas() if r.can_grow(limit)]
        if not candidates:
            return None
        replica = min(candidates, key=lambda r: (r.established, r.failures))
        replica.open_started()
        return replica

    async def connect_pooled(self, replica: Replica[Holder]) -> Connection:
        return await self._connect(replica, pooled=True, reserved=True)

    def has_hope(self) -> bool:
        return self._has_hope()

    def unavailable(self) -> ConnbridgeError:
        return self._unavailable()

    def exhausted(self, limit: float) -> ConnbridgeError:
        return self._exhausted(limit)

    def overloaded(self, waiting: int) -> ConnbridgeError:
        self._errors["overloaded"] += 1
        return PoolOverloaded(f"backend {self.name}: {waiting} callers already wait")

    def note_wait(self, seconds: float) -> None:
        self._waits += 1
        self._wait_total += seconds
        self._wait_max = max(self._wait_max, seconds)

    def note_opened(self) -> None:
        self._opened += 1

    def note_released(self) -> None:
        self._released.set()

    def _abandon(self, holder: Holder) -> None:
        """An exchange whose reply may still come: drain it, or close when never reused."""
        if self.single_use or holder.replica.reuse is Reuse.NEVER:
            holder.close("abandoned")
        else:
            holder.drain()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Lease]:
        """Check a connection out for several exchanges, as a :class:`Lease`.

        The lease works inside the block only; any use after it raises
        :class:`~connbridge.errors.LeaseReleased`. If the block raises (or is
        cancelled) the exchange state is unknown, so the connection is closed
        gently in the background (EOF sent, the server's last reply read and
        discarded) instead of being reused. The same happens if input is left
        unread.
        """
        loop = self._loop or asyncio.get_running_loop()
        budget = self.settings.acquire_timeout
        holder = await self._acquire(loop.time() + budget, budget)
        lease = Lease(holder.conn)
        try:
            yield lease
        except BaseException:
            lease.end()
            holder.close("error")
            raise
        lease.end()
        if holder.conn.has_pending_input():
            holder.close("error")
        else:
            holder.exchange_done()

    async def open_dedicated(self) -> Connection:
        """Open a connection outside the pool's slots, for a long-lived session.

        It goes to the healthy address with the fewest calls in flight. The
        caller owns it and must close it. An address whose learned capacity
        is taken gets no new connection: :class:`BackendBusy` at once. If the
        handshake stays silent past ``handshake_timeout`` while other
        connections to the address work, the connection is not abandoned (see
        the module doc): the pool adopts it, and this raises
        :class:`BackendBusy`. Raises :class:`BackendUnavailable`,
        :class:`ConnectError`, :class:`HandshakeTimeout` (no challenge from an
        address with nothing else open) and :class:`HandshakeError` too.
        """
        if self._closed:
            raise PoolClosed(f"pool {self.name} is closed")
        replicas = [r for r in self._live_replicas() if r.state is not ReplicaState.DOWN]
        if not replicas:
            raise self._unavailable()
        free = [r for r in replicas if not r.at_capacity()]
        if not free:
            raise BackendBusy(
                f"backend {self.name} serves {replicas[0].capacity or 'its'} connection(s) "
                "at a time and they are taken; try again later"
            )
        replica = min(free, key=lambda r: r.load)
        conn = await self._connect(replica, pooled=False)
        self._dedicated += 1
        return conn

    # introspection

    @property
    def ready(self) -> bool:
        """True when the pool's own state says some address works."""
        return not self._closed and any(r.state is ReplicaState.UP for r in self._replicas.values())

    async def check(self, timeout: float) -> bool:
        """Readiness probe: true if a call could get a connection.

        Uses the pool's state when it knows an address is up; otherwise it
        tries to check out a real, authenticated connection. It never makes a
        bare TCP connection, which would kill a fragile server.
        """
        if self._closed:
            return False
        if self.ready:
            return True
        loop = self._loop or asyncio.get_running_loop()
        if self._pipelines.on:
            await self._pipelines.wait_ready(timeout)
            return self.ready
        try:
            holder = await self._acquire(loop.time() + timeout, timeout)
        except ConnbridgeError:
            return False
        self.came_back(holder)
        return True

    def health(self) -> PoolHealth:
        """Status from the pool's state: ``up`` if any address is, ``down`` if
        every address is ejected, ``unknown`` before the first connection."""
        states = [r.state for r in self._replicas.values() if not r.stale]
        if ReplicaState.UP in states:
            status = "up"
        elif (states and ReplicaState.UNKNOWN not in states) or (
            self._resolve_error and not states
        ):
            status = "down"
        else:
            status = "unknown"
        now = time.monotonic()
        health: PoolHealth = {
            "status": status,
            "addresses": [r.view(now) for r in self._replicas.values()],
        }
        if self._resolve_error:
            health["error"] = self._resolve_error
        return health

    def stats(self) -> PoolStats:
        """Counters and gauges, for the whole pool and per address (JSON-able)."""
        replicas = list(self._replicas.values())
        now = time.monotonic()
        return {
            "name": self.name,
            "open": sum(r.established for r in replicas),
            "idle": sum(len(r.idle) for r in replicas),
            "in_use": sum(r.in_use for r in replicas) + self._pipelines.in_flight,
            "draining": sum(r.draining for r in replicas),
            "opening": sum(r.opening for r in replicas),
            "stalled_handshakes": sum(r.stalled for r in replicas),
            "waiters": len(self._waiters),
            "opened": self._opened,
            "calls": self._calls,
            "errors": dict(self._errors),
            "violations": self._violations,
            "discarded_replies": self._discarded,
            "waits": self._waits,
            "wait_time_total_s": round(self._wait_total, 6),
            "wait_time_max_s": round(self._wait_max, 6),
            "closed": dict(self._closed_by),
            "dedicated_opened": self._dedicated,
            "max_connections_per_address": self.settings.max_connections,
            "addresses": [r.view(now) for r in replicas],
        }

    # acquiring

    async def _acquire(self, deadline: float, budget: float) -> Holder:
        loop = self._loop or asyncio.get_running_loop()
        started = loop.time()
        acquire_deadline = min(deadline, started + self.settings.acquire_timeout)
        waited = False
        try:
            while True:
                if self._closed:
                    raise PoolClosed(f"pool {self.name} is closed")
                holder = self._take_idle()
                if holder is not None:
                    return holder
                self._grow(caller=1)
                if not self._has_hope():
                    raise self._unavailable()
                pending = len(self._waiters)
                if pending >= self.settings.max_waiters:
                    self._errors["overloaded"] += 1
                    raise PoolOverloaded(
                        f"backend {self.name}: {pending} callers already wait for a connection"
                    )
                waited = True
                waiter: asyncio.Future[Holder | None] = loop.create_future()
                self._waiters.append(waiter)
                timer = loop.call_at(acquire_deadline, expire, waiter)
                try:
                    got = await waiter
                except TimeoutError:
                    self._return_unclaimed(waiter)
                    limit = (
                        budget if acquire_deadline >= deadline else self.settings.acquire_timeout
                    )
                    raise self._exhausted(limit) from None
                except BaseException:
                    self._return_unclaimed(waiter)
                    raise
                finally:
                    timer.cancel()
                if got is not None and self._usable(got):
                    return got
        finally:
            if waited:
                spent = loop.time() - started
                self._waits += 1
                self._wait_total += spent
                self._wait_max = max(self._wait_max, spent)

    def _exhausted(self, limit: float) -> AcquireTimeout:
        self._errors["pool_exhausted"] += 1
        replicas = self._replicas.values()
        in_use = sum(r.in_use for r in replicas)
        draining = sum(r.draining for r in replicas)
        return AcquireTimeout(
            f"backend {self.name}: no connection became free within {limit} s "
            f"({in_use} in use, {draining} draining the replies of abandoned calls); "
            "the request was not sent",
            in_use=in_use,
            draining=draining,
        )

    def _return_unclaimed(self, waiter: asyncio.Future[Holder | None]) -> None:
        """A waiter gave up; if a connection was handed to it meanwhile, pass it on."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            holder = waiter.result()
            if holder is not None and holder.state is HolderState.IDLE and not holder.parked:
                self._offer(holder)  # handed to us but not taken: pass it on
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _take_idle(self) -> Holder | None:
        """Check out an idle connection on the address with the fewest calls in flight."""
        while True:
            best: Replica[Holder] | None = None
            for replica in self._replicas.values():
                if replica.idle and (best is None or replica.in_use < best.in_use):
                    best = replica
            if best is None:
                return None
            holder = best.idle[-1]  # most recently used: warm, least likely expired
            if self._usable(holder):
                return holder

    def _usable(self, holder: Holder) -> bool:
        """Check an idle holder out if it is fit for a new exchange; close it otherwise."""
        if holder.state is not HolderState.IDLE:
            return False  # closed while the waiter it was handed to woke up
        if holder.spent:
            # Handed to this waiter before its address's reuse ended.
            holder.close("no_reuse")
            return False
        conn = holder.conn
        if conn.has_pending_input():
            # EOF or stray bytes on an idle connection: the backend closed it
            # or misbehaved; it never saw our request, so this costs no call.
            holder.close("idle_eof" if conn.peer_closed else "error")
            return False
        now = time.monotonic()
        if now - holder.created > self.settings.max_lifetime:
            holder.close("lifetime")
            return False
        if now - holder.last_used > self.settings.idle_timeout:
            holder.close("idle")
            return False
        if holder.parked:  # otherwise it was handed over directly
            holder.parked = False
            idle = holder.replica.idle
            if idle[-1] is holder:
                idle.pop()
            else:
                idle.remove(holder)
        holder.check_out()
        return True

    def _offer(self, holder: Holder) -> None:
        """Hand an idle (parked) connection to the first waiter, or to the idle list.

        Handed over directly, first come first served, so that a caller that
        loops cannot take its own connection back ahead of those waiting. The
        stray-input watch stays armed until the waiter takes it.
        """
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(holder)
                return
        holder.parked = True
        holder.replica.idle.append(holder)

    def _close_idle(self, reason: str) -> None:
        for replica in self._replicas.values():
            while replica.idle:
                replica.idle[0].close(reason)

    def _fail_waiters(self, exc: ConnbridgeError) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def _wake_waiters(self) -> None:
        """Let waiters look again (an address came back, or capacity changed)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # health

    def _live_replicas(self) -> list[Replica[Holder]]:
        return [r for r in self._replicas.values() if not r.stale]

    def _has_hope(self) -> bool:
        """Is there any connection, or attempt, that may yet serve a waiter?"""
        now = time.monotonic()
        if self._pipelines.pipes:
            return True
        for r in self._replicas.values():
            if r.may_serve:
                return True
            if not r.stale and not r.ejected(now):
                return True
        return False

    def _unavailable(self) -> BackendUnavailable:
        self._errors["unavailable"] += 1
        failed = [r for r in self._replicas.values() if r.last_error and not r.stale]
        reasons = [f"{r.address}: {r.last_error}" for r in failed] or (
            [self._resolve_error] if self._resolve_error else ["no address could be reached"]
        )
        return BackendUnavailable(
            f"backend {self.name} is unavailable ({'; '.join(reasons)})",
            handshake_failed=bool(failed) and all(r.error_kind in _HANDSHAKE_KINDS for r in failed),
        )

    def _count_error(self, replica: Replica[Holder], kind: str) -> None:
        self._errors[kind] += 1
        replica.errors[kind] += 1

    def _mark_up(self, replica: Replica[Holder]) -> None:
        if replica.mark_up():
            logger.info("backend %s: %s is up again", self.name, replica.address)
            self._wake_waiters()

    def _set_aside(self, replica: Replica[Holder]) -> bool:
        """Drop a resolved address that never answered while a sibling works; True if so."""
        if (
            replica.source == replica.address
            or replica.ever_up
            or replica.failures < _DORMANT_AFTER
            or not any(
                r.source == replica.source and r.state is ReplicaState.UP and not r.stale
                for r in self._replicas.values()
            )
        ):
            return False
        key = str(replica.address)
        self._dormant.add(key)
        replica.stale = True
        logger.info(
            "backend %s: %s (from %s) never answered in %d tries while another address of "
            "that name works; it is left out until the name's addresses change",
            self.name,
            replica.address,
            replica.source,
            replica.failures,
        )
        return True

    def _mark_down(self, replica: Replica[Holder], exc: BaseException, kind: str) -> None:
        delay = replica.mark_down(str(exc), kind, auth=isinstance(exc, AuthenticationError))
        self._errors[kind] += 1
        if self._set_aside(replica):
            return
        logger.warning(
            "backend %s: %s is down (%s); next try in %.1f s",
            self.name,
            replica.address,
            replica.last_error,
            delay,
        )
        if replica.prober is None and not self._closed:
            replica.prober = self.spawn(self._probe(replica))
        if not self._has_hope():
            self._fail_waiters(self._unavailable())

    async def _probe(self, replica: Replica[Holder]) -> None:
        """Reconnect to an ejected address after its backoff; the connection joins the pool."""
        try:
            while not self._closed and replica.state is ReplicaState.DOWN and not replica.stale:
                await asyncio.sleep(max(0.0, replica.ejected_until - time.monotonic()))
                if replica.stalled:
                    # A silent handshake is still waiting: it is the probe.
                    replica.ejected_until = time.monotonic() + BACKOFF_BASE
                    continue
                await self._resolve()
                if not replica.stale and not self._closed:
                    # Waited on, not awaited: cancelling the prober (as close
                    # does) must not cut a handshake the server may be in.
                    await asyncio.wait({self._open_soon(replica, reason="probe")})
        finally:
            replica.prober = None

    # opening connections

    def _grow(self, caller: int = 0) -> None:
        """Open a connection if callers wait and an address has room for one more.

        ``caller`` is 1 when called for a caller not yet queued as a waiter.
        Without demand nothing opens: an idle connection closed for its idle
        timeout stays closed until a call needs one.
        """
        if self._closed:
            return
        demand = len(self._waiters) + caller
        replicas = self._replicas.values()
        # A connection settling after its first reply is about to be free.
        if demand <= sum(len(r.idle) + r.settling for r in replicas):
            return
        if sum(r.opening for r in replicas) >= demand:
            return
        limit = self.settings.max_connections
        candidates = [r for r in self._live_replicas() if r.can_grow(limit)]
        if not candidates:
            return
        replica = min(candidates, key=lambda r: (r.in_use + r.established, r.failures))
        self._open_soon(replica, reason="demand")

    def _open_soon(self, replica: Replica[Holder], *, reason: str) -> asyncio.Task[None]:
        """Reserve the opening slot now (so concurrent callers see it), connect in a task."""
        replica.open_started()
        return self.spawn(self._open(replica, reason=reason))

    async def _open(self, replica: Replica[Holder], *, reason: str) -> None:
        """Open one pooled connection to ``replica`` (its opening slot is
        already reserved); failures mark the address down."""
        try:
            conn = await self._connect(replica, pooled=True, reserved=True)
        except (ConnbridgeError, OSError) as exc:
            logger.debug("backend %s: opening (%s) failed: %s", self.name, reason, exc)
            return
        self._adopt(conn, replica)
        self._grow()

    def _adopt(
        self, conn: Connection, replica: Replica[Holder], *, pipelined: bool = False
    ) -> None:
        """A new authenticated connection (already counted as established) joins the pool.

        ``pipelined``: it becomes a pipelined connection for :meth:`call`;
        otherwise a holder, for a waiting caller or the idle list.
        """
        if pipelined:
            self._pipelines.adopt(conn, replica)
            return
        self._opened += 1
        holder = Holder(conn, replica, self, time.monotonic())
        self.came_back(holder)

    async def _connect(
        self, replica: Replica[Holder], *, pooled: bool, reserved: bool = False
    ) -> Connection:
        """Connect and authenticate, accounting for the result on ``replica``.

        ``pooled`` connections count against the address's slots; dedicated
        ones do not. A handshake that stays silent past ``handshake_timeout``
        raises :class:`BackendBusy` (other connections work: the server is
        busy) or :class:`HandshakeTimeout` (nothing else works), but the
        connection is kept: when the server gets to it, it joins the pool.
        """
        s = self.settings
        if not reserved:
            replica.open_started()
        # Decided now, not when the handshake stalls: a server still busy with
        # one of ours when this began explains its silence even if that one
        # has ended since (it may reach this one any moment).
        busy = replica.serving_another()
        established = False
        try:
            try:
                conn = await open_connection(
                    replica.address,
                    connect_timeout=s.connect_timeout,
                    max_frame=s.max_frame,
                    pickle_protocol=s.pickle_protocol,
                    loads=self._loads,
                    dumps=self._dumps,
                )
            except ConnbridgeError as exc:
                self._mark_down(replica, exc, "connect")
                raise
            if self._authkey is None:
                await self._expect_silence(replica, conn)
                self._mark_up(replica)
            else:
                handshake = asyncio.ensure_future(
                    conn.authenticate(
                        self._authkey, allow_md5=s.allow_md5, legacy_digest=s.legacy_digest
                    )
                )
                try:
                    done, _ = await asyncio.wait({handshake}, timeout=s.handshake_timeout)
                except asyncio.CancelledError:
                    if self._closed:
                        await self._cut_short(conn, handshake)
                    else:
                        # The caller left mid-handshake; the server may be
                        # about to reach it, or already be in it.
                        self.spawn(self._finish_abandoned(conn, handshake))
                    raise
                if not done:
                    raise self._handshake_stalled(replica, conn, handshake, busy=busy)
                self._handshake_result(replica, conn, handshake)
            if pooled:
                await self._run_prepare(replica, conn)
            established = pooled
            return conn
        finally:
            replica.open_ended(established=established)

    async def _run_prepare(self, replica: Replica[Holder], conn: Connection) -> None:
        """Await ``prepare`` on a new pooled connection; on failure close it and raise."""
        if self._prepare is None:
            return
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                await self._prepare(conn)
        except BaseException as exc:
            conn.abort()
            if isinstance(exc, ConnbridgeError | TimeoutError | OSError):
                self._mark_down(replica, exc, "prepare")
            raise

    async def _expect_silence(self, replica: Replica[Holder], conn: Connection) -> None:
        """With no authkey, make sure the server does not speak first.

        A Listener with an authkey sends its challenge as soon as it accepts.
        Sending it a request instead would be read as a wrong answer, which
        kills the classic server; so before any request, the connection waits
        ``settle_time`` for such a challenge. Raises
        :class:`AuthenticationError` for one (the address is marked down).
        """
        loop = self._loop or asyncio.get_running_loop()
        try:
            first = await conn.recv_bytes(deadline=loop.time() + self.settings.settle_time)
        except TimeoutError:
            return  # silent, as a server without an authkey is
        except ConnbridgeError as exc:
            self.spawn(conn.close(timeout=1.0))
            self._mark_down(replica, exc, "closed")
            raise
        self.spawn(conn.close(timeout=1.0))
        error: ConnbridgeError
        if first.startswith(CHALLENGE):
            error = AuthenticationError(
                "the server sent an authentication challenge before any request: it requires "
                "an authkey, and none is configured for this backend (authkey_env or "
                "authkey_file)"
            )
            self._mark_down(replica, error, "auth")
        else:
            error = ProtocolError("the server sent data before any request")
            self._mark_down(replica, error, "handshake")
        raise error

    def _handshake_result(
        self, replica: Replica[Holder], conn: Connection, handshake: asyncio.Future[None]
    ) -> bool:
        """True if the handshake worked; otherwise the address is marked down and it raises."""
        exc = handshake.exception()
        if exc is None:
            self._mark_up(replica)
            return True
        self.spawn(conn.close(timeout=1.0))
        if isinstance(exc, AuthenticationError):
            self._mark_down(replica, exc, "auth")
        elif isinstance(exc, HandshakeError | ProtocolError):
            self._mark_down(replica, exc, "handshake")
        elif isinstance(exc, ConnectionClosed):
            self._mark_down(replica, exc, "closed")
        raise exc

    def _handshake_stalled(
        self,
        replica: Replica[Holder],
        conn: Connection,
        handshake: asyncio.Future[None],
        *,
        busy: bool,
    ) -> ConnbridgeError:
        """Keep a silent handshake until the server gets to it; return the error to raise.

        ``busy``: another of our connections was open or closing here when it
        began. Then the server is busy, not down, even if that connection has
        ended since: the address is not ejected and the callers keep waiting.
        """
        working = busy or replica.serving_another()
        known = replica.capacity
        replica.stall_started()
        if replica.idle:
            replica.idle[0].close("make_room")  # the server is free to reach the new one
        elif self._pipelines.on:
            self._pipelines.retire_one(replica)
        error: ConnbridgeError
        if working:
            # The address works but does not take another connection now: a
            # server that serves one connection (or a few) at a time.
            if replica.capacity != known:
                logger.info(
                    "backend %s: %s serves %d connection(s) at a time; not opening more",
                    self.name,
                    replica.address,
                    replica.capacity,
                )
            how = (
                f"serves {replica.capacity} connection(s) at a time"
                if replica.capacity
                else "is still finishing an earlier connection"
            )
            error = BackendBusy(f"backend {self.name}: {replica.address} {how} and is busy")
        else:
            error = HandshakeTimeout(
                f"{replica.address} sent no challenge within {self.settings.handshake_timeout} s: "
                "the Listener may have no authkey, or it serves one connection at a time "
                "and is busy"
            )
            self._mark_down(replica, error, "handshake_timeout")
        self.spawn(self._finish_late(replica, conn, handshake))
        return error

    async def _finish_late(
        self, replica: Replica[Holder], conn: Connection, handshake: asyncio.Future[None]
    ) -> None:
        """Wait, with no time limit, for the server to reach a silent handshake.

        Closing it would make such a server's ``accept()`` fail, so it is
        never closed while the pool runs; only a shutdown past its grace
        cancels this (and then nothing gentler is left).
        """
        try:
            await asyncio.wait({handshake})
        except asyncio.CancelledError:
            replica.stall_ended(established=False)
            await self._cut_short(conn, handshake)
            raise
        try:
            established = self._handshake_result(replica, conn, handshake)
            await self._run_prepare(replica, conn)
        except (ConnbridgeError, OSError):
            established = False
        replica.stall_ended(established=established)
        if established:
            # A pipelined pool's calls need a pipe, unless a caller of a
            # whole connection (a stream, a lease) waits for one.
            self._adopt(conn, replica, pipelined=self._pipelines.on and not self._waiters)
            self._grow()

    async def _finish_abandoned(self, conn: Connection, handshake: asyncio.Future[None]) -> None:
        """Let a handshake whose caller gave up end, then close it cleanly.

        Left open, a one-connection-at-a-time server would serve it forever;
        cut, it would make that server's ``accept()`` fail when it gets to
        it. Only a shutdown past its grace cancels this.
        """
        try:
            await asyncio.wait({handshake})
        except asyncio.CancelledError:
            await self._cut_short(conn, handshake)
            raise
        await self._end_handshake(conn, handshake, "abandoned_handshake")

    async def _cut_short(self, conn: Connection, handshake: asyncio.Future[None]) -> None:
        """A shutdown past its grace reached a handshake that has not ended.

        If the server is in the middle of it, cutting it now would make the
        server's ``accept()`` fail: it gets ``handshake_timeout`` more to end
        and is then closed cleanly (counted ``shutdown``). One the server
        never reached is aborted (``shutdown_stalled``): nothing gentler is
        left (the README's scaling section says so).
        """
        try:
            if conn.handshake_begun and not handshake.done():
                await asyncio.wait({handshake}, timeout=self.settings.handshake_timeout)
        finally:
            await self._end_handshake(conn, handshake, "shutdown", failed="shutdown_stalled")

    async def _end_handshake(
        self,
        conn: Connection,
        handshake: asyncio.Future[None],
        reason: str,
        *,
        failed: str | None = None,
    ) -> None:
        """Close ``conn`` cleanly if its handshake worked; otherwise abort it (and the handshake).

        A handshake that failed or never ended leaves nothing a server waits
        for on this connection. Counted under ``reason``, or ``failed``.
        """
        worked = handshake.done() and not handshake.cancelled() and handshake.exception() is None
        self.count_close(reason if worked or failed is None else failed)
        if not worked:
            handshake.cancel()
            conn.abort()
            return
        try:
            await conn.close(timeout=1.0)
        except BaseException:
            conn.abort()  # cancelled again: nothing gentler is left
            raise

    # housekeeping

    async def _housekeeping(self) -> None:
        """Close idle connections past their idle timeout or lifetime; refresh DNS."""
        s = self.settings
        while not self._closed:
            await asyncio.sleep(
                min(_HOUSEKEEPING_INTERVAL, s.idle_timeout / 2, s.readiness_interval)
            )
            now = time.monotonic()
            for replica in self._replicas.values():
                for holder in list(replica.idle):
                    if now - holder.created > s.max_lifetime:
                        holder.close("lifetime")
                    elif now - holder.last_used > s.idle_timeout:
                        holder.close("idle")
                    elif replica.stale:
                        holder.close("stale")
                    elif holder.conn.has_pending_input():
                        holder.close("idle_eof")
            self._pipelines.housekeep((self._loop or asyncio.get_running_loop()).time())
            for replica in self._live_replicas():
                if replica.needs_liveness_check(now, s.readiness_interval):
                    replica.open_started()
                    self.spawn(self._check_alive(replica))
            self._forget_stale()
            if now - self._resolved_at >= s.dns_interval and not all(
                a.family == "unix" or a.is_ip for a in self.addresses
            ):
                await self._resolve()
            self._grow()

    async def _check_alive(self, replica: Replica[Holder]) -> None:
        """Prove an address alive with a real, authenticated connection.

        Its opening slot is reserved. A failure marks the address down (so
        :attr:`ready` tells the truth with no call made); a success serves a
        waiter if one came meanwhile, or is closed cleanly, as a fragile
        server expects: pools open connections only for demand.
        """
        try:
            conn = await self._connect(replica, pooled=True, reserved=True)
        except (ConnbridgeError, OSError):
            return
        self._opened += 1
        holder = Holder(conn, replica, self, time.monotonic())
        if self._waiters and not self._closed:
            self.came_back(holder)
        else:
            holder.close("liveness")

    def _forget_stale(self) -> None:
        """Drop addresses DNS no longer lists once nothing of theirs is open.

        Without this, a name whose addresses churn (pods of a headless
        Service coming and going) would grow the table without bound.
        """
        for key, replica in list(self._replicas.items()):
            if replica.forgettable():
                del self._replicas[key]

    async def _resolve(self) -> None:
        """Resolve host names; each IP becomes a replica. Names that vanished go stale."""
        loop = self._loop or asyncio.get_running_loop()
        self._resolved_at = time.monotonic()
        found: dict[str, tuple[Address, Address]] = {}
        errors: list[str] = []
        for configured in self.addresses:
            if configured.family == "unix" or configured.is_ip:
                found[str(configured)] = (configured, configured)
                continue
            try:
                infos = await loop.getaddrinfo(
                    configured.host, configured.port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                errors.append(f"cannot resolve {configured.host}: {exc.strerror or exc}")
                # keep what we resolved before for this name (not what it had dropped)
                for key, replica in self._replicas.items():
                    if replica.source == configured and not replica.stale:
                        found[key] = (replica.address, configured)
                continue
            for _family, _type, _proto, _canon, sockaddr in infos:
                resolved = Address("tcp", host=str(sockaddr[0]), port=int(sockaddr[1]))
                found[str(resolved)] = (resolved, configured)
        self._resolve_error = "; ".join(errors) or None
        if self._dormant:
            # Set aside only while the name still resolves to a working sibling.
            working = {
                str(r.source)
                for r in self._replicas.values()
                if r.state is ReplicaState.UP and not r.stale
            }
            self._dormant &= set(found)
            for key in list(self._dormant):
                if str(found[key][1]) in working:
                    del found[key]
                else:
                    self._dormant.discard(key)
        for key, (resolved, source) in found.items():
            existing = self._replicas.get(key)
            if existing is None:
                self._replicas[key] = Replica[Holder](resolved, source)
            elif existing.stale:
                existing.stale = False
        for key, replica in self._replicas.items():
            if key not in found and not replica.stale:
                replica.stale = True
                while replica.idle:
                    replica.idle[0].close("stale")
        if not self._has_hope():
            self._fail_waiters(self._unavailable())

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._released.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnbridgeError | OSError):
                logger.error("backend %s: background task failed", self.name, exc_info=exc)
