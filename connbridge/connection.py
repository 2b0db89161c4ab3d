"""An asyncio connection that speaks ``multiprocessing.connection``.

This module is the thin adapter between sockets and the sans-I/O core: it
feeds received bytes to a :class:`~connbridge.frames.FrameDecoder`, hands
handshake payloads to :mod:`connbridge.handshake`, and writes what they return.
Everything the stdlib leaves unbounded is bounded here: connecting, the
handshake, the size of a frame, and the bytes buffered while nobody reads.

Objects are pickled with a chosen protocol and unpickled through the
allowlist of :mod:`connbridge.unpickler` only.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, cast

from .addresses import Address, AddressLike, parse_address
from .errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    HandshakeError,
    HandshakeTimeout,
    ProtocolError,
)
from .frames import DEFAULT_MAX_FRAME, FrameDecoder, frame_header
from .handshake import CHALLENGE, MAX_HANDSHAKE_MESSAGE, ClientHandshake, ServerHandshake
from .pool_settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT
from .unpickler import loads as allowlist_loads
from .unpickler import make_dumps

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Connection",
    "FrameProtocol",
    "connect",
    "open_connection",
]

#: How long :meth:`Connection.close` waits for the peer's EOF after ours.
DEFAULT_CLOSE_TIMEOUT = 5.0
# While nobody is reading, stop reading from the socket past this many
# buffered bytes, so a peer that streams faster than we consume cannot grow
# our memory; the kernel's buffers then push back on the peer.
_READ_HIGH_WATER = 256 * 1024
# Payloads up to this size are written together with their header in one call.
_COALESCE_LIMIT = 16 * 1024

Loads = Callable[[bytes], object]
Dumps = Callable[[object], bytes]


def expire(waiter: asyncio.Future[Any]) -> None:
    """Fail ``waiter`` with ``TimeoutError`` unless it is done: a timer's callback.

    ``loop.call_at(deadline, expire, waiter)`` is much cheaper on a hot path
    than ``asyncio.timeout()``, and a result already handed over wins.
    """
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class FrameProtocol(asyncio.Protocol):
    """Receives bytes into a frame decoder and wakes at most one reader.

    The asyncio protocol under a :class:`Connection`, for both sides: a
    server (:mod:`connbridge.server`) builds one per accepted socket.
    """

    def __init__(
        self, max_frame: int, on_connect: Callable[[FrameProtocol], None] | None = None
    ) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        # A payload taken for a reader that was cancelled before it resumed;
        # it is handed to the next reader so no reply is silently dropped.
        self.pushback: deque[bytes] = deque()
        self.eof = False
        self.error: BaseException | None = None
        # Kept: asyncio.get_running_loop() makes a getpid() system call on
        # Python 3.11, once per round trip if called in recv_bytes.
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: deque[asyncio.Future[None]] = deque()
        # Called when input (a frame's bytes, or EOF) arrives while nobody
        # reads: on an idle pooled connection that is a stray reply or the
        # server going away, and the pool wants to know at once, not at the
        # next checkout, when a request may already be on its way.
        self.watcher: Callable[[], None] | None = None
        # Pipelined mode (Connection.start_pipelining): one future per request
        # in flight, answered in order; a future already done (its caller
        # timed out or went away) still takes its reply, which is dropped.
        self.queue: deque[asyncio.Future[bytes]] | None = None
        self.outbox: list[bytes | bytearray | memoryview] = []
        self.on_reply: Callable[[], None] | None = None
        self.discarding = False
        self.discarded = 0

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        if self.on_connect is not None:
            self.on_connect(self)

    def data_received(self, data: bytes) -> None:
        if self.eof:
            # After our close() starts we only wait for the peer's EOF, and
            # count the replies we drop on the way.
            if self.discarding:
                self.discarded += self.decoder.skip(data)
            return
        decoder = self.decoder
        if self.queue is not None:
            self._dispatch(data)
            return
        waiter = self.waiter
        if (
            waiter is not None
            and not decoder.buffered
            and len(data) >= 4
            and int.from_bytes(data[:4], "big", signed=True) == len(data) - 4
            and len(data) - 4 <= decoder.max_frame
            and not waiter.done()
        ):
            # The common case: exactly one whole frame for a waiting reader.
            waiter.set_result(data[4:])
            return
        decoder.feed(data)
        if waiter is not None and not waiter.done():
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                self._broken(exc)
                return
            if frame is not None:
                waiter.set_result(frame)
            return
        if self.watcher is not None:
            self.watcher()
        if decoder.buffered > _READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _dispatch(self, data: bytes) -> None:
        """Pipelined mode: hand each whole frame to the oldest request in flight."""
        decoder = self.decoder
        queue = self.queue
        assert queue is not None
        decoder.feed(data)
        while queue:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                self._broken(exc)
                return
            if frame is None:
                break
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(frame)
            if self.on_reply is not None:
                self.on_reply()
        # A partial frame is owed to a request in flight and bounded by
        # max_frame, so reading never pauses here; bytes with no request in
        # flight are a frame nobody asked for.
        if not queue and decoder.buffered and self.watcher is not None:
            self.watcher()

    def _fail_queue(self, exc: BaseException) -> None:
        queue = self.queue
        if not queue:
            return
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if self.on_reply is not None:
            self.on_reply()

    def eof_received(self) -> bool:
        self.eof = True
        self._fail_queue(ConnectionClosed("the peer closed the connection"))
        self._wake(ConnectionClosed("the peer closed the connection"))
        self._notify_idle()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = ConnectionClosed(f"connection lost: {exc}")
            self.error.__cause__ = exc
        self._fail_queue(self.error or ConnectionClosed("the connection is closed"))
        self._wake(self.error or ConnectionClosed("the connection is closed"))
        self._notify_idle()
        if not self.lost.done():
            self.lost.set_result(None)
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        while self.drain_waiters:
            waiter = self.drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # helpers for Connection

    def _wake(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _notify_idle(self) -> None:
        if self.watcher is not None and (self.waiter is None or self.waiter.done()):
            self.watcher()

    def _broken(self, exc: BaseException) -> None:
        """The stream is in an unknown state: remember why and drop the transport."""
        if self.error is None:
            self.error = exc
        self._fail_queue(exc)
        self._wake(exc)
        if self.transport is not None:
            self.transport.abort()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()


class Connection:
    """One authenticated connection to a Listener (or, server side, from a Client).

    Use :func:`connect` to make one. ``send``/``recv`` exchange pickled
    objects; ``send_bytes``/``recv_bytes`` exchange raw payloads. At most one
    coroutine may wait in ``recv``/``recv_bytes`` at a time; sends may be
    concurrent (each frame is written whole). Usable as ``async with``.
    """

    def __init__(
        self,
        stream: FrameProtocol,
        address: Address,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        pickle_protocol: int = 4,
        loads: Loads | None = None,
        dumps: Dumps | None = None,
    ) -> None:
        self._stream = stream
        assert stream.transport is not None
        self._transport: asyncio.Transport = stream.transport
        self.address = address
        self.max_frame = max_frame
        self._loads = loads or allowlist_loads
        self._dumps = dumps or make_dumps(pickle_protocol)
        self._authenticated = False
        self._received_any = False
        self._closing = False
        #: True once the peer's first handshake message arrived: the server has
        #: accepted this connection and is in the middle of its handshake.
        self.handshake_begun = False
        #: ``"legacy"`` or the digest the peer challenged with; None without a handshake.
        self.peer_dialect: str | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.address} {state}>"

    # state

    @property
    def closed(self) -> bool:
        """True once the connection can no longer carry a new exchange."""
        stream = self._stream
        return (
            self._closing or stream.eof or stream.error is not None or self._transport.is_closing()
        )

    def has_pending_input(self) -> bool:
        """True if bytes arrived that nobody asked for, or the peer has closed.

        An idle connection with pending input is not safe to start an exchange
        on: whatever arrived would be taken as the reply.
        """
        stream = self._stream
        return bool(stream.pushback) or stream.decoder.buffered > 0 or self.closed

    def limit_frames(self, max_frame: int | None) -> None:
        """Refuse frames over ``max_frame`` bytes from now on (``None``: back to the default).

        Checked from each frame's header, before its payload is buffered.
        """
        self._stream.decoder.max_frame = self.max_frame if max_frame is None else max_frame

    def has_unread_data(self) -> bool:
        """True if bytes arrived that nobody has read (EOF alone does not count)."""
        stream = self._stream
        return bool(stream.pushback) or stream.decoder.buffered > 0

    def watch(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called when input arrives while nobody receives.

        That is a stray frame, or the peer's EOF, on a connection with no
        exchange in progress. ``None`` stops watching. The callback runs inside
        the transport's callbacks: it must not raise or block. Input already
        pending when this is called does not trigger it; check
        :meth:`has_pending_input` after setting it.
        """
        self._stream.watcher = callback

    @property
    def discarded_frames(self) -> int:
        """Frames dropped unread because they arrived after :meth:`close` began."""
        return self._stream.discarded

    @property
    def peer_closed(self) -> bool:
        """True once the peer's EOF (or a reset) has been seen."""
        return self._stream.eof

    # raw payloads

    async def send_bytes(
        self, data: bytes | bytearray | memoryview, *, deadline: float | None = None
    ) -> None:
        """Send one payload as one frame.

        The whole frame is handed to the transport before this first awaits;
        it then waits while the transport's buffer is over its high-water
        mark, until the loop time ``deadline`` at most (``TimeoutError``).
        Raises :class:`ConnectionClosed` if the connection is closed.
        """
        if self.closed:
            raise self._closed_error()
        transport = self._transport
        size = len(data)
        if size <= _COALESCE_LIMIT:
            transport.write(frame_header(size) + data)
        else:
            transport.write(frame_header(size))
            transport.write(data)
        if self._stream.writing_paused:
            if deadline is None:
                await self._drain()
            else:
                async with asyncio.timeout_at(deadline):
                    await self._drain()

    def start_pipelining(self, on_reply: Callable[[], None] | None = None) -> None:
        """Switch to pipelined exchanges: :meth:`submit` many, replies matched in order.

        Only for a peer that answers every message with exactly one reply, in
        order. ``on_reply`` is called whenever requests in flight are
        answered or failed (a slot is free). :meth:`recv_bytes` is not used
        in this mode.
        """
        stream = self._stream
        if stream.waiter is not None or stream.decoder.buffered or stream.pushback:
            raise RuntimeError("pipelining must start on a connection with nothing pending")
        stream.queue = deque()
        stream.on_reply = on_reply

    @property
    def in_flight(self) -> int:
        """Pipelined requests not answered yet (those whose callers gave up included)."""
        queue = self._stream.queue
        return len(queue) if queue is not None else 0

    def submit(self, data: bytes | bytearray | memoryview) -> asyncio.Future[bytes]:
        """Pipelined mode: send one payload; the future gets its reply.

        The frame is handed to the transport at the end of this loop
        iteration, together with any other submitted meanwhile. If the
        caller stops waiting (a timeout sets ``TimeoutError`` on the future,
        or it is cancelled), the request keeps its place: its reply, when it
        comes, is dropped, so every later reply still reaches its own
        request. Raises :class:`ConnectionClosed` if the connection is closed
        (then nothing was sent).
        """
        stream = self._stream
        queue = stream.queue
        if queue is None:
            raise RuntimeError("submit() needs start_pipelining()")
        if self.closed:
            raise self._closed_error()
        # Frames submitted in the same loop iteration are written together:
        # one system call for a burst of calls instead of one each.
        outbox = stream.outbox
        if not outbox:
            stream.loop.call_soon(self._flush)
        outbox.append(frame_header(len(data)))
        outbox.append(data)
        waiter: asyncio.Future[bytes] = stream.loop.create_future()
        queue.append(waiter)
        return waiter

    def _flush(self) -> None:
        outbox = self._stream.outbox
        if not outbox:
            return
        if not self._transport.is_closing():
            self._transport.write(b"".join(outbox))
        outbox.clear()

    @property
    def writing_paused(self) -> bool:
        """True while the transport's write buffer is over its high-water mark."""
        return self._stream.writing_paused

    async def wait_writable(self, deadline: float | None = None) -> None:
        """Wait until the write buffer drains below its high-water mark (``TimeoutError``)."""
        if not self._stream.writing_paused:
            return
        if deadline is None:
            await self._drain()
        else:
            async with asyncio.timeout_at(deadline):
                await self._drain()

    async def recv_bytes(self, *, deadline: float | None = None) -> bytes:
        """Receive one payload; ``TimeoutError`` past the loop time ``deadline``.

        Raises :class:`ConnectionClosed` when the peer has closed,
        :class:`~connbridge.errors.FrameTooLarge` when a header announces more
        than ``max_frame`` bytes and :class:`ProtocolError` for a corrupt
        header; after either of the latter the connection is closed.
        """
        stream = self._stream
        if stream.pushback:
            return stream.pushback.popleft()
        try:
            frame = stream.decoder.next_frame()
        except ProtocolError as exc:
            stream._broken(exc)
            raise
        if frame is not None:
            if stream.reading_paused and stream.decoder.buffered <= _READ_HIGH_WATER:
                stream.resume_reading()
            return frame
        if stream.error is not None:
            raise stream.error
        if stream.eof:
            raise self._closed_error()
        if stream.waiter is not None:
            raise RuntimeError("another coroutine is already receiving on this connection")
        stream.resume_reading()
        loop = stream.loop
        waiter: asyncio.Future[bytes] = loop.create_future()
        stream.waiter = waiter
        # A timer on the waiter is much cheaper than asyncio.timeout() on the
        # hot path; a frame already handed over wins over the timer.
        timer = None if deadline is None else loop.call_at(deadline, expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The payload may have been taken for us just before we were
            # cancelled: keep it for the next reader instead of losing it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                stream.pushback.append(waiter.result())
            raise
        finally:
            stream.waiter = None
            if timer is not None:
                timer.cancel()

    # objects

    async def send(self, obj: object) -> None:
        """Pickle ``obj`` with this connection's protocol and send it.

        Raises :class:`~connbridge.errors.PickleError` if it cannot be
        pickled, :class:`ConnectionClosed` if the connection is closed.
        """
        await self.send_bytes(self._dumps(obj))

    async def recv(self) -> object:
        """Receive one object, unpickled through the allowlist.

        Raises :class:`~connbridge.errors.RefusedGlobal` for a pickle that
        names a global outside the allowlist (nothing of it runs), and
        :class:`HandshakeError` when a server that demands an authkey sends
        its challenge to a connection opened without one.
        """
        data = await self.recv_bytes()
        if not self._received_any:
            self._received_any = True
            if not self._authenticated and data.startswith(CHALLENGE):
                raise HandshakeError(
                    "the server sent an authentication challenge: it requires an "
                    "authkey and none is configured for this connection"
                )
        return self._loads(data)

    # lifecycle

    async def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Close cleanly: send EOF, wait for the peer's EOF, then close.

        A server that reads until ``EOFError`` thus ends its loop normally
        instead of meeting a reset. Anything still arriving is discarded.
        After ``timeout`` seconds without the peer's EOF the connection is
        aborted. Never raises for connection errors.
        """
        if self._closing:
            await asyncio.shield(self._stream.lost)
            return
        self._closing = True
        stream, transport = self._stream, self._transport
        stream.resume_reading()
        if not transport.is_closing():
            try:
                if transport.can_write_eof():
                    transport.write_eof()
            except OSError:
                transport.abort()
        # Drop what is buffered; from now on data_received discards input,
        # counting the frames.
        stream.discarded += len(stream.pushback) + stream.decoder.skip()
        stream.discarding = True
        stream.pushback.clear()
        stream._wake(ConnectionClosed("the connection was closed locally"))
        stream.eof = True
        try:
            if not stream.lost.done():
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(stream.lost)
                except TimeoutError:
                    transport.abort()
            transport.close()
            await asyncio.shield(stream.lost)
        except BaseException:
            transport.abort()  # cancelled: never leave the socket open
            raise

    def abort(self) -> None:
        """Drop the connection at once (the peer sees a reset). Prefer :meth:`close`."""
        self._closing = True
        self._transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # internals

    def _closed_error(self) -> ConnectionClosed:
        error = self._stream.error
        if isinstance(error, ConnectionClosed):
            return error
        return ConnectionClosed(f"the connection to {self.address} is closed")

    async def _drain(self) -> None:
        stream = self._stream
        if not stream.writing_paused:
            return
        if stream.lost.done():
            raise self._closed_error()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.drain_waiters.append(waiter)
        await waiter
        if stream.lost.done():
            raise self._closed_error()

    def _write_frames(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self._transport.write(frame_header(len(payload)) + payload)

    async def authenticate(
        self, authkey: bytes, *, allow_md5: bool = True, legacy_digest: str = "md5"
    ) -> None:
        """Run the client half of the handshake, with no time limit.

        :func:`connect` bounds it with ``handshake_timeout``; a pool runs it
        unbounded in the background instead, because closing a connection
        that a one-connection-at-a-time server has not accepted yet makes that
        server's ``accept()`` fail. Raises :class:`HandshakeError` and
        :class:`~connbridge.errors.AuthenticationError`.
        """
        await self.run_handshake(
            ClientHandshake(authkey, allow_md5=allow_md5, legacy_digest=legacy_digest)
        )

    async def run_handshake(self, handshake: ClientHandshake | ServerHandshake) -> None:
        """Drive either half of a handshake to its end, with no time limit.

        Handshake messages are limited to 256 bytes, as in the stdlib. Raises
        :class:`HandshakeError` (a malformed message),
        :class:`~connbridge.errors.AuthenticationError` (a key refused) and
        :class:`ConnectionClosed` when the peer closes the connection in the
        middle: a peer that went away, not a key problem.
        """
        decoder = self._stream.decoder
        decoder.max_frame = MAX_HANDSHAKE_MESSAGE
        try:
            if isinstance(handshake, ServerHandshake):
                self._write_frames([handshake.start()])
            while not handshake.done:
                try:
                    message = await self.recv_bytes()
                except ProtocolError as exc:
                    raise HandshakeError(f"malformed handshake message: {exc}") from exc
                except ConnectionClosed as exc:
                    raise ConnectionClosed(
                        f"the peer closed the connection during the handshake, while we "
                        f"waited for {handshake.awaiting}"
                    ) from exc
                self.handshake_begun = True
                self._write_frames(handshake.receive(message))
                if handshake.error is not None:
                    raise handshake.error
        finally:
            decoder.max_frame = self.max_frame
        self._authenticated = True
        self.peer_dialect = handshake.peer_dialect


async def open_stream(
    address: AddressLike, *, connect_timeout: float | None, max_frame: int
) -> tuple[Address, FrameProtocol]:
    """Open the transport only and return the protocol object.

    Raises :class:`ConnectTimeout` or :class:`ConnectError`.
    """
    addr = parse_address(address)
    loop = asyncio.get_running_loop()

    def factory() -> FrameProtocol:
        return FrameProtocol(max_frame)

    try:
        async with asyncio.timeout(connect_timeout):
            if addr.family == "unix" and addr.path.startswith("\0"):
                # uvloop cannot connect to an abstract name by itself
                # (MagicStack/uvloop#528): connect a plain socket, then hand it over.
                plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    plain.setblocking(False)
                    await loop.sock_connect(plain, addr.path)
                except BaseException:
                    plain.close()
                    raise
                _, stream = await loop.create_unix_connection(factory, sock=plain)
            elif addr.family == "unix":
                _, stream = await loop.create_unix_connection(factory, addr.path)
            else:
                _, stream = await loop.create_connection(factory, addr.host, addr.port)
    except TimeoutError as exc:
        raise ConnectTimeout(f"connecting to {addr} took longer than {connect_timeout} s") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectError(f"cannot connect to {addr}: {reason}") from exc
    if addr.family == "tcp":
        raw = stream.transport.get_extra_info("socket") if stream.transport else None
        if raw is not None:
            # Requests are small and latency-bound: never wait for Nagle.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return addr, stream


async def open_connection(
    address: AddressLike,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    pickle_protocol: int = 4,
    loads: Loads | None = None,
    dumps: Dumps | None = None,
) -> Connection:
    """Open the transport and wrap it, without the handshake.

    The caller runs :meth:`Connection.authenticate` when the server has an
    authkey. Raises :class:`~connbridge.errors.AddressError`,
    :class:`ConnectError` and :class:`ConnectTimeout`.
    """
    addr, stream = await open_stream(address, connect_timeout=connect_timeout, max_frame=max_frame)
    return Connection(
        stream,
        addr,
        max_frame=max_frame,
        pickle_protocol=pickle_protocol,
        loads=loads,
        dumps=dumps,
    )


async def connect(
    address: AddressLike,
    *,
    authkey: bytes | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    allow_md5: bool = True,
    pickle_protocol: int = 4,
    loads: Loads | None = None,
    dumps: Dumps | None = None,
) -> Connection:
    """Connect to a ``multiprocessing.connection.Listener`` and authenticate.

    With an ``authkey`` the client half of the handshake runs as the stdlib
    ``Client`` does it (answer the server's challenge, then challenge it);
    ``authkey=None`` skips it, as the stdlib does. ``None`` timeouts wait
    forever.

    Raises :class:`~connbridge.errors.AddressError`, :class:`ConnectError`,
    :class:`ConnectTimeout`, :class:`~connbridge.errors.AuthenticationError`
    (a wrong key; the message never contains it), :class:`HandshakeTimeout`
    and :class:`HandshakeError`.
    """
    conn = await open_connection(
        address,
        connect_timeout=connect_timeout,
        max_frame=max_frame,
        pickle_protocol=pickle_protocol,
        loads=loads,
        dumps=dumps,
    )
    if authkey is None:
        return conn
    handshake = ClientHandshake(authkey, allow_md5=allow_md5)
    try:
        await run_with_timeout(
            conn.run_handshake(handshake), handshake_timeout, conn.address, handshake
        )
    except BaseException:
        await conn.close(timeout=1.0)
        raise
    return conn


async def run_with_timeout(
    coro: Awaitable[None],
    timeout: float | None,
    address: Address,
    handshake: ClientHandshake | ServerHandshake,
) -> None:
    """Await a handshake, turning a timeout into an error that names the likely cause."""
    try:
        async with asyncio.timeout(timeout):
            await coro
    except TimeoutError as exc:
        hint = ""
        if isinstance(handshake, ClientHandshake) and handshake.awaiting_challenge:
            hint = (
                " The Listener may have no authkey (it then waits for the client to "
                "speak first), or it serves one connection at a time and is busy."
            )
        raise HandshakeTimeout(
            f"handshake with {address} timed out after {timeout} s waiting for "
            f"{handshake.awaiting}.{hint}"
        ) from exc
