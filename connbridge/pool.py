"""A bounded, self-healing pool of connections to one backend.

The rule this pool lives by: **a reply never reaches the wrong caller.** A
connection whose exchange timed out, was cancelled or failed is never handed
to another caller while a reply to the old exchange may still arrive. After a
timeout or a cancellation the connection stays checked out while a background
task reads the late reply (the *drain*); only then is it reused. It is closed
if the drain itself times out, and always when its state is unknown (a broken
frame, a protocol error).

How the pool treats the servers it talks to:

* **One-connection-at-a-time servers.** Most hand-written Listeners accept a
  connection, serve it until EOF, then accept the next. A second connection
  is accepted by the kernel but its handshake stays silent. The pool opens
  new connections one at a time per address, and when a handshake stays
  silent past ``handshake_timeout`` while other connections to that address
  work, it learns that the address serves only that many connections
  (``capacity`` in the statistics) and stops opening more. The silent
  connection is not abandoned: closing a connection that such a server will
  accept later makes its ``accept()`` fail, which kills the classic server.
  It waits in the background and joins the pool when the server gets to it
  (and the learned capacity is forgotten, since the server proved it serves
  more).
* **Fragile servers.** Connections are closed with a clean EOF (and we wait
  for the server's EOF before closing the socket), late replies are drained
  rather than cut off, and after a wrong key the address backs off for a
  long time instead of retrying, since each attempt may kill such a server.
* **Replicas.** A backend may have several addresses, and a host name may
  resolve to several IPs (re-resolved every ``dns_interval`` seconds: this is
  how a headless Kubernetes Service fans out). An IP the name no longer
  lists takes no new calls; its idle connections close, calls in flight
  finish, and then it is forgotten. Calls go to the healthy
  address with the fewest calls in flight. An address that fails is ejected
  with exponential backoff and jitter; a background probe reconnects to it
  before it takes calls again. When every address is down, callers get
  :class:`~connbridge.errors.BackendUnavailable` at once.
* **Retries.** A call is retried on another connection only when it provably
  never reached the backend: an idle connection that shows EOF or stray bytes
  at checkout is dropped silently, and a refused connect only ejects the
  address. A request that may have been delivered is never sent twice; if the
  connection breaks mid-call the caller gets
  :class:`~connbridge.errors.CallInterrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .addresses import Address, AddressLike, parse_address
from .connection import Connection, open_connection
from .errors import (
    AcquireTimeout,
    AuthenticationError,
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
from .pool_settings import PoolSettings
from .unpickler import make_dumps, make_loads

__all__ = ["Pool", "PoolSettings"]

logger = logging.getLogger(__name__)

# Backoff of an address after a failure: doubles from the base up to the cap.
_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 30.0
# After a wrong key: each attempt may kill a fragile server, so wait longer.
_AUTH_BACKOFF_BASE = 5.0
_AUTH_BACKOFF_CAP = 300.0
# How often the housekeeping task looks for idle and expired connections.
_HOUSEKEEPING_INTERVAL = 1.0
#: Error kinds of a failed handshake (a wrong key, or none where one is needed).
_HANDSHAKE_KINDS: Final = frozenset({"auth", "handshake", "handshake_timeout"})


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Holder:
    """A pooled connection and what the pool knows about it."""

    __slots__ = ("conn", "created", "last_used", "target")

    def __init__(self, conn: Connection, target: _Target, now: float) -> None:
        self.conn = conn
        self.target = target
        self.created = now
        self.last_used = now


@dataclass(eq=False)
class _Target:
    """One resolved address (a replica) and its health."""

    address: Address
    source: Address  # the configured address it was resolved from
    idle: deque[_Holder] = field(default_factory=deque)
    in_use: int = 0
    draining: int = 0
    established: int = 0
    opening: int = 0
    stalled: int = 0
    capacity: int | None = None
    state: str = "unknown"  # "unknown" | "up" | "down"
    failures: int = 0
    ejected_until: float = 0.0
    last_error: str | None = None
    #: What failed last: "connect", "auth", "handshake", "handshake_timeout", ...
    error_kind: str | None = None
    stale: bool = False
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prober: asyncio.Task[None] | None = None

    def ejected(self, now: float) -> bool:
        return self.state == "down" and (now < self.ejected_until or self.prober is not None)

    def can_grow(self, limit: int) -> bool:
        cap = limit if self.capacity is None else min(limit, self.capacity)
        return (
            not self.stale
            and self.state != "down"
            and self.opening == 0
            and self.stalled == 0
            and self.established + self.opening < cap
        )


class Pool:
    """Connections to one backend (one or more addresses), shared by many callers.

    ``await pool.start()`` first; then ``await pool.call(obj)`` or
    ``async with pool.connection() as conn``; finally ``await pool.close()``.
    """

    def __init__(
        self,
        addresses: AddressLike | Sequence[AddressLike],
        *,
        authkey: bytes | None,
        settings: PoolSettings | None = None,
        name: str = "default",
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
        self._loads = make_loads(self.settings.allowlist, encoding=self.settings.py2_encoding)
        self._dumps = make_dumps(self.settings.pickle_protocol)
        self._targets: dict[str, _Target] = {}
        self._waiters: deque[asyncio.Future[_Holder | None]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._started = False
        # Set by start(): asyncio.get_running_loop() costs a getpid() system
        # call per use on Python 3.11, which showed in profiles of call().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resolved_at = -1e9
        self._resolve_error: str | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._released = asyncio.Event()
        # statistics
        self._calls = 0
        self._errors: Counter[str] = Counter()
        self._closed_by: Counter[str] = Counter()
        self._waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._dedicated = 0

    def __repr__(self) -> str:
        return f"<Pool {self.name} {[str(a) for a in self.addresses]}>"

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
        targets = self._live_targets()
        if targets:
            await self._open_soon(targets[0], reason="start-up")

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish within ``grace``
        seconds, then close every connection cleanly (the backends see EOF).
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
        for target in self._targets.values():
            if target.prober is not None:
                target.prober.cancel()
        # Wait for calls in flight, drains and silent handshakes, which a
        # one-connection-at-a-time server gets to once we close the others.
        while loop.time() < deadline:
            self._close_idle("shutdown")
            busy = any(
                t.in_use or t.draining or t.opening or t.stalled for t in self._targets.values()
            )
            if not busy:
                break
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.05, max(0.0, deadline - loop.time()))):
                    await self._released.wait()
        self._close_idle("shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, ConnbridgeError):
                await task

    @property
    def closed(self) -> bool:
        return self._closed

    # calls

    async def call(self, obj: object, *, timeout: float | None = None) -> object:
        """Send ``obj`` and return the backend's reply (one send, one receive).

        ``timeout`` (default ``call_timeout``) bounds the whole call, waiting
        for a connection included. Raises :class:`CallTimeout`,
        :class:`CallInterrupted` (the backend may or may not have processed
        the request), :class:`BackendUnavailable`, :class:`PoolOverloaded`,
        :class:`AcquireTimeout`, :class:`PoolClosed`, and the codec's
        :class:`~connbridge.errors.PickleError` (for the request, or a reply
        the allowlist refuses). A reply that is an exception object is
        returned, not raised.
        """
        data = self._dumps(obj)
        loop = self._loop or asyncio.get_running_loop()
        budget = self.settings.call_timeout if timeout is None else timeout
        deadline = loop.time() + budget
        holder = await self._acquire(deadline, budget)
        conn = holder.conn
        target = holder.target
        target.calls += 1
        self._calls += 1
        try:
            # The whole frame is handed to the transport before the first
            # await, so from here on the request counts as delivered.
            await conn.send_bytes(data, deadline=deadline)
            reply = await conn.recv_bytes(deadline=deadline)
        except TimeoutError:
            self._drain_later(holder)
            self._count_error(target, "timeout")
            raise CallTimeout(
                f"backend {self.name} ({target.address}) did not answer within {budget} s"
            ) from None
        except ConnectionClosed as exc:
            self._discard(holder, "error")
            self._count_error(target, "interrupted")
            raise CallInterrupted(
                f"backend {self.name} ({target.address}) closed the connection during "
                "the call; it may or may not have processed the request"
            ) from exc
        except ProtocolError:
            self._discard(holder, "error")
            self._count_error(target, "protocol")
            raise
        except BaseException:
            # Cancelled (the caller went away) after the request was written:
            # the reply may still come, so drain it before any reuse.
            self._drain_later(holder)
            self._count_error(target, "cancelled")
            raise
        self._release(holder)
        try:
            return self._loads(reply)
        except ConnbridgeError:
            self._count_error(target, "pickle")
            raise

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Check a connection out for several exchanges.

        If the block raises (or is cancelled) the exchange state is unknown,
        so the connection is closed gently in the background (EOF sent, the
        server's last reply read and discarded) instead of being reused. The
        same happens if input is left unread.
        """
        loop = asyncio.get_running_loop()
        budget = self.settings.acquire_timeout
        holder = await self._acquire(loop.time() + budget, budget)
        try:
            yield holder.conn
        except BaseException:
            self._discard(holder, "error")
            raise
        if holder.conn.has_pending_input():
            self._discard(holder, "error")
        else:
            self._release(holder)

    async def open_dedicated(self) -> Connection:
        """Open a connection outside the pool's slots, for a long-lived session.

        It goes to the healthy address with the fewest calls in flight. The
        caller owns it and must close it. If its handshake stays silent past
        ``handshake_timeout`` it is not abandoned (see the module doc): it is
        adopted by the pool or closed once the server gets to it, and this
        raises :class:`HandshakeTimeout`. Raises :class:`BackendUnavailable`,
        :class:`ConnectError` and :class:`HandshakeError` too.
        """
        if self._closed:
            raise PoolClosed(f"pool {self.name} is closed")
        targets = [t for t in self._live_targets() if t.state != "down"]
        if not targets:
            raise self._unavailable()
        target = min(targets, key=lambda t: t.in_use + t.draining)
        conn = await self._connect(target, pooled=False)
        self._dedicated += 1
        return conn

    # introspection

    @property
    def ready(self) -> bool:
        """True when the pool's own state says some address works."""
        return any(t.state == "up" for t in self._targets.values()) and not self._closed

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
        loop = asyncio.get_running_loop()
        try:
            holder = await self._acquire(loop.time() + timeout, timeout)
        except ConnbridgeError:
            return False
        self._release(holder)
        return True

    def health(self) -> dict[str, Any]:
        """Status from the pool's state: ``up`` if any address is, ``down`` if
        every address is ejected, ``unknown`` before the first connection."""
        states = [t.state for t in self._targets.values() if not t.stale]
        status = (
            "up" if "up" in states else "down" if states and "unknown" not in states else "unknown"
        )
        if self._resolve_error and not states:
            status = "down"
        return {
            "status": status,
            "addresses": [self._target_view(t) for t in self._targets.values()],
            **({"error": self._resolve_error} if self._resolve_error else {}),
        }

    def stats(self) -> dict[str, Any]:
        """Counters and gauges, for the whole pool and per address (JSON-able)."""
        targets = list(self._targets.values())
        idle = sum(len(t.idle) for t in targets)
        in_use = sum(t.in_use for t in targets)
        return {
            "name": self.name,
            "open": sum(t.established for t in targets),
            "idle": idle,
            "in_use": in_use,
            "draining": sum(t.draining for t in targets),
            "opening": sum(t.opening for t in targets),
            "stalled_handshakes": sum(t.stalled for t in targets),
            "waiters": len(self._waiters),
            "calls": self._calls,
            "errors": dict(self._errors),
            "waits": self._waits,
            "wait_time_total_s": round(self._wait_total, 6),
            "wait_time_max_s": round(self._wait_max, 6),
            "closed": dict(self._closed_by),
            "dedicated_opened": self._dedicated,
            "max_connections_per_address": self.settings.max_connections,
            "addresses": [self._target_view(t) for t in targets],
        }

    def _target_view(self, t: _Target) -> dict[str, Any]:
        now = time.monotonic()
        view: dict[str, Any] = {
            "address": str(t.address),
            "state": t.state,
            "open": t.established,
            "idle": len(t.idle),
            "in_use": t.in_use,
            "draining": t.draining,
            "capacity": t.capacity,
            "calls": t.calls,
            "errors": dict(t.errors),
            "consecutive_failures": t.failures,
        }
        if t.source != t.address:
            view["resolved_from"] = str(t.source)
        if t.last_error:
            view["last_error"] = t.last_error
            view["error_kind"] = t.error_kind
        if t.state == "down":
            view["retry_in_s"] = round(max(0.0, t.ejected_until - now), 3)
        if t.stale:
            view["stale"] = True
        return view

    # acquiring and releasing

    async def _acquire(self, deadline: float, budget: float) -> _Holder:
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
                waiter: asyncio.Future[_Holder | None] = loop.create_future()
                self._waiters.append(waiter)
                timer = loop.call_at(acquire_deadline, _expire, waiter)
                try:
                    got = await waiter
                except TimeoutError:
                    self._return_unclaimed(waiter)
                    if acquire_deadline >= deadline:
                        self._errors["timeout"] += 1
                        raise CallTimeout(
                            f"backend {self.name}: no connection became free within {budget} s"
                        ) from None
                    self._errors["acquire_timeout"] += 1
                    raise AcquireTimeout(
                        f"backend {self.name}: no connection became free within "
                        f"{self.settings.acquire_timeout} s"
                    ) from None
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

    def _return_unclaimed(self, waiter: asyncio.Future[_Holder | None]) -> None:
        """A waiter gave up; if a connection was handed to it meanwhile, pass it on."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            holder = waiter.result()
            if holder is not None:
                self._release(holder)
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _take_idle(self) -> _Holder | None:
        """Check out an idle connection on the address with the fewest calls in flight."""
        while True:
            best: _Target | None = None
            for target in self._targets.values():
                if target.idle and (best is None or target.in_use < best.in_use):
                    best = target
            if best is None:
                return None
            holder = best.idle.pop()  # most recently used: warm, least likely expired
            if self._usable(holder):
                return holder

    def _usable(self, holder: _Holder) -> bool:
        """Mark a holder in use if it is fit for a new exchange; drop it otherwise."""
        target = holder.target
        target.in_use += 1
        conn = holder.conn
        if conn.has_pending_input():
            # EOF or stray bytes on an idle connection: the backend closed it
            # or misbehaved; it never saw our request, so this costs no call.
            self._discard(holder, "idle_eof" if conn.peer_closed else "error")
            return False
        now = time.monotonic()
        if now - holder.created > self.settings.max_lifetime:
            self._discard(holder, "lifetime")
            return False
        if now - holder.last_used > self.settings.idle_timeout:
            self._discard(holder, "idle")
            return False
        return True

    def _release(self, holder: _Holder) -> None:
        """Return a connection with no exchange pending (never awaits: safe under cancellation)."""
        target = holder.target
        target.in_use -= 1
        holder.last_used = time.monotonic()
        self._released.set()
        if self._closed or target.stale:
            self._close_holder(holder, "shutdown" if self._closed else "stale")
            return
        self._offer(holder)

    def _offer(self, holder: _Holder) -> None:
        """Hand an idle connection to the first waiter, or park it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(holder)
                return
        holder.target.idle.append(holder)

    def _discard(self, holder: _Holder, reason: str) -> None:
        """Take a checked-out connection out of service and close it gently."""
        holder.target.in_use -= 1
        self._released.set()
        self._close_holder(holder, reason)
        self._grow()

    def _drain_later(self, holder: _Holder) -> None:
        """Read the late reply of an abandoned exchange, then reuse or close the connection."""
        target = holder.target
        target.in_use -= 1
        target.draining += 1

        async def drain() -> None:
            try:
                async with asyncio.timeout(self.settings.drain_timeout):
                    await holder.conn.recv_bytes()
            except (TimeoutError, ConnbridgeError, OSError) as exc:
                target.draining -= 1
                self._closed_by["drain_failed"] += 1
                reason = "drain_timeout" if isinstance(exc, TimeoutError) else "error"
                self._close_holder(holder, reason, count=False)
                self._grow()
                return
            except asyncio.CancelledError:
                target.draining -= 1
                holder.conn.abort()
                target.established -= 1
                raise
            target.draining -= 1
            target.in_use += 1
            self._release(holder)

        self._spawn(drain())

    def _close_holder(self, holder: _Holder, reason: str, *, count: bool = True) -> None:
        target = holder.target
        target.established -= 1
        if count:
            self._closed_by[reason] += 1
        # Closing waits for the server's EOF, so a server still computing a
        # reply can send it (we discard it) instead of meeting a reset.
        self._spawn(holder.conn.close(timeout=self.settings.drain_timeout))

    def _close_idle(self, reason: str) -> None:
        for target in self._targets.values():
            while target.idle:
                self._close_holder(target.idle.popleft(), reason)

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

    def _live_targets(self) -> list[_Target]:
        return [t for t in self._targets.values() if not t.stale]

    def _has_hope(self) -> bool:
        """Is there any connection, or attempt, that may yet serve a waiter?"""
        now = time.monotonic()
        for t in self._targets.values():
            if t.idle or t.in_use or t.draining or t.opening:
                return True
            if not t.stale and not t.ejected(now):
                return True
        return False

    def _unavailable(self) -> BackendUnavailable:
        self._errors["unavailable"] += 1
        failed = [t for t in self._targets.values() if t.last_error and not t.stale]
        reasons = [f"{t.address}: {t.last_error}" for t in failed] or (
            [self._resolve_error] if self._resolve_error else ["no address could be reached"]
        )
        return BackendUnavailable(
            f"backend {self.name} is unavailable ({'; '.join(reasons)})",
            handshake_failed=bool(failed) and all(t.error_kind in _HANDSHAKE_KINDS for t in failed),
        )

    def _count_error(self, target: _Target, kind: str) -> None:
        self._errors[kind] += 1
        target.errors[kind] += 1

    def _mark_up(self, target: _Target) -> None:
        was_down = target.state == "down"
        target.state = "up"
        target.failures = 0
        target.last_error = None
        target.error_kind = None
        target.ejected_until = 0.0
        if was_down:
            logger.info("backend %s: %s is up again", self.name, target.address)
            self._wake_waiters()

    def _mark_down(self, target: _Target, exc: BaseException, kind: str) -> None:
        target.failures += 1
        auth = isinstance(exc, AuthenticationError)
        base, cap = (
            (_AUTH_BACKOFF_BASE, _AUTH_BACKOFF_CAP) if auth else (_BACKOFF_BASE, _BACKOFF_CAP)
        )
        delay = min(cap, base * 2 ** (target.failures - 1))
        delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        target.ejected_until = time.monotonic() + delay
        target.last_error = f"{kind}: {exc}"
        target.error_kind = kind
        target.state = "down"
        self._count_error(target, kind)
        logger.warning(
            "backend %s: %s is down (%s); next try in %.1f s",
            self.name,
            target.address,
            target.last_error,
            delay,
        )
        if target.prober is None and not self._closed:
            target.prober = self._spawn(self._probe(target))
        if not self._has_hope():
            self._fail_waiters(self._unavailable())

    async def _probe(self, target: _Target) -> None:
        """Reconnect to an ejected address after its backoff; the connection joins the pool."""
        try:
            while not self._closed and target.state == "down" and not target.stale:
                await asyncio.sleep(max(0.0, target.ejected_until - time.monotonic()))
                if target.stalled:
                    # A silent handshake is still waiting: it is the probe.
                    target.ejected_until = time.monotonic() + _BACKOFF_BASE
                    continue
                await self._resolve()
                if not target.stale and not self._closed:
                    await self._open_soon(target, reason="probe")
        finally:
            target.prober = None

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
        idle = sum(len(t.idle) for t in self._targets.values())
        if demand <= idle:
            return
        opening = sum(t.opening for t in self._targets.values())
        if opening >= demand:
            return
        candidates = [t for t in self._live_targets() if t.can_grow(self.settings.max_connections)]
        if not candidates:
            return
        target = min(candidates, key=lambda t: (t.in_use + t.established, t.failures))
        self._open_soon(target, reason="demand")

    def _open_soon(self, target: _Target, *, reason: str) -> asyncio.Task[None]:
        """Reserve the opening slot now (so concurrent callers see it), connect in a task."""
        target.opening += 1
        return self._spawn(self._open(target, reason=reason))

    async def _open(self, target: _Target, *, reason: str) -> None:
        """Open one pooled connection to ``target`` (its ``opening`` slot is
        already reserved); failures mark the address down."""
        try:
            conn = await self._connect(target, pooled=True, reserved=True)
        except (ConnbridgeError, OSError) as exc:
            logger.debug("backend %s: opening (%s) failed: %s", self.name, reason, exc)
            return
        holder = _Holder(conn, target, time.monotonic())
        if self._closed:
            self._close_holder(holder, "shutdown")
            return
        self._offer(holder)
        self._grow()

    async def _connect(
        self, target: _Target, *, pooled: bool, reserved: bool = False
    ) -> Connection:
        """Connect and authenticate, accounting for the result on ``target``.

        ``pooled`` connections count against the address's slots; dedicated
        ones do not. A handshake that stays silent past ``handshake_timeout``
        raises :class:`HandshakeTimeout`, but the connection is kept: when the
        server gets to it, it joins the pool if there is room, or is closed
        cleanly.
        """
        s = self.settings
        if not reserved:
            target.opening += 1
        try:
            try:
                conn = await open_connection(
                    target.address,
                    connect_timeout=s.connect_timeout,
                    max_frame=s.max_frame,
                    pickle_protocol=s.pickle_protocol,
                    loads=self._loads,
                    dumps=self._dumps,
                )
            except ConnbridgeError as exc:
                self._mark_down(target, exc, "connect")
                raise
            if self._authkey is None:
                target.established += pooled
                self._mark_up(target)
                return conn
            handshake = asyncio.ensure_future(
                conn.authenticate(self._authkey, allow_md5=s.allow_md5)
            )
            done, _ = await asyncio.wait({handshake}, timeout=s.handshake_timeout)
            if not done:
                self._handshake_stalled(target, conn, handshake)
                raise HandshakeTimeout(
                    f"{target.address} sent no challenge within {s.handshake_timeout} s"
                )
            return self._handshake_result(target, conn, handshake, pooled=pooled)
        finally:
            target.opening -= 1

    def _handshake_result(
        self, target: _Target, conn: Connection, handshake: asyncio.Future[None], *, pooled: bool
    ) -> Connection:
        exc = handshake.exception()
        if exc is None:
            target.established += pooled
            self._mark_up(target)
            return conn
        self._spawn(conn.close(timeout=1.0))
        if isinstance(exc, AuthenticationError):
            self._mark_down(target, exc, "auth")
        elif isinstance(exc, HandshakeError | ConnectionClosed | ProtocolError):
            self._mark_down(target, exc, "handshake")
        raise exc

    def _handshake_stalled(
        self,
        target: _Target,
        conn: Connection,
        handshake: asyncio.Future[None],
    ) -> None:
        target.stalled += 1
        if target.established > 0:
            # The address works but does not take another connection now: a
            # server that serves one connection (or a few) at a time.
            if target.capacity is None or target.capacity > target.established:
                target.capacity = target.established
                logger.info(
                    "backend %s: %s serves %d connection(s) at a time; not opening more",
                    self.name,
                    target.address,
                    target.capacity,
                )
        else:
            self._mark_down(
                target,
                HandshakeTimeout(
                    "no challenge within the handshake timeout: the Listener may have no "
                    "authkey, or it serves one connection at a time and is busy"
                ),
                "handshake_timeout",
            )

        async def finish_late() -> None:
            limit = max(self.settings.idle_timeout, self.settings.handshake_timeout)
            try:
                async with asyncio.timeout(limit):
                    await asyncio.shield(handshake)
            except TimeoutError:
                target.stalled -= 1
                handshake.cancel()
                self._closed_by["handshake_timeout"] += 1
                await conn.close(timeout=1.0)
                return
            except asyncio.CancelledError:
                target.stalled -= 1
                handshake.cancel()
                conn.abort()
                raise
            target.stalled -= 1
            try:
                self._handshake_result(target, conn, handshake, pooled=True)
            except (ConnbridgeError, OSError):
                return
            if target.capacity is not None and target.established > target.capacity:
                target.capacity = None  # it served more than we thought
            holder = _Holder(conn, target, time.monotonic())
            if self._closed or target.established > self.settings.max_connections:
                self._close_holder(holder, "shutdown" if self._closed else "surplus")
            else:
                self._offer(holder)

        self._spawn(finish_late())

    # housekeeping

    async def _housekeeping(self) -> None:
        """Close idle connections past their idle timeout or lifetime; refresh DNS."""
        s = self.settings
        while not self._closed:
            await asyncio.sleep(min(_HOUSEKEEPING_INTERVAL, s.idle_timeout / 2))
            now = time.monotonic()
            for target in self._targets.values():
                keep: deque[_Holder] = deque()
                while target.idle:
                    holder = target.idle.popleft()
                    if now - holder.created > s.max_lifetime:
                        self._close_holder(holder, "lifetime")
                    elif now - holder.last_used > s.idle_timeout:
                        self._close_holder(holder, "idle")
                    elif target.stale:
                        self._close_holder(holder, "stale")
                    elif holder.conn.has_pending_input():
                        self._close_holder(holder, "idle_eof")
                    else:
                        keep.append(holder)
                target.idle = keep
            self._forget_stale()
            if now - self._resolved_at >= s.dns_interval and not all(
                a.family == "unix" or a.is_ip for a in self.addresses
            ):
                await self._resolve()
            self._grow()

    def _forget_stale(self) -> None:
        """Drop addresses DNS no longer lists once nothing of theirs is open.

        Without this, a name whose addresses churn (pods of a headless
        Service coming and going) would grow the table without bound.
        """
        for key, target in list(self._targets.items()):
            if (
                target.stale
                and target.established == 0
                and target.opening == 0
                and target.stalled == 0
                and target.prober is None
            ):
                del self._targets[key]

    async def _resolve(self) -> None:
        """Resolve host names; each IP becomes a target. Names that vanished go stale."""
        loop = asyncio.get_running_loop()
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
                for key, target in self._targets.items():
                    if target.source == configured and not target.stale:
                        found[key] = (target.address, configured)
                continue
            for _family, _type, _proto, _canon, sockaddr in infos:
                resolved = Address("tcp", host=str(sockaddr[0]), port=int(sockaddr[1]))
                found[str(resolved)] = (resolved, configured)
        self._resolve_error = "; ".join(errors) or None
        for key, (resolved, source) in found.items():
            existing = self._targets.get(key)
            if existing is None:
                self._targets[key] = _Target(resolved, source)
            elif existing.stale:
                existing.stale = False
        for key, target in self._targets.items():
            if key not in found and not target.stale:
                target.stale = True
                while target.idle:
                    self._close_holder(target.idle.popleft(), "stale")
        if not self._has_hope():
            self._fail_waiters(self._unavailable())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._released.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnbridgeError | OSError):
                logger.error("backend %s: background task failed", self.name, exc_info=exc)
