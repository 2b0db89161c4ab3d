"""The replies to one message, read one by one as the backend sends them.

Many Listener servers answer a message with several replies (progress
reports, partial results, a generator's items). :meth:`connbridge.pool.Pool.stream`
sends the message once and hands out a :class:`ReplyStream`; the caller reads
with :meth:`ReplyStream.next` until it decides the stream has ended.

The protocol has no end-of-stream marker, so the end is the caller's rule:
a sentinel value or a count of replies (both *provable*: the caller saw the
last reply, and calls :meth:`ReplyStream.finish` so the connection can be
reused), or the backend closing the connection, a silent gap
(:class:`~connbridge.errors.StreamIdle`) or the overall deadline
(:class:`~connbridge.errors.CallTimeout`), after which more replies may still
come, so the connection is closed.

Nothing is read ahead: a reader that stops reading stops the stream. The
connection buffers at most a little more than its read high-water mark, then
stops reading from the socket, and the backend's TCP window does the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .connection import Connection
from .errors import CallTimeout, StreamIdle

__all__ = ["ReplyStream"]


class ReplyStream:
    """Replies to one request, in the order the backend sent them."""

    __slots__ = ("_conn", "_deadline", "_loads", "_loop", "count", "finished", "last_size")

    def __init__(
        self,
        conn: Connection,
        loads: Callable[[bytes], object],
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._conn = conn
        self._loads = loads
        self._deadline = deadline
        self._loop = loop
        #: Replies read so far.
        self.count = 0
        #: Size in bytes of the last reply's pickle.
        self.last_size = 0
        #: True once the caller said the last reply was read (:meth:`finish`).
        self.finished = False

    async def next(self, idle_timeout: float | None = None) -> object:
        """Wait for the next reply (at most ``idle_timeout`` s of silence) and unpickle it.

        Raises :class:`StreamIdle` after ``idle_timeout`` seconds with no
        reply, :class:`CallTimeout` past the stream's deadline,
        :class:`~connbridge.errors.ConnectionClosed` when the backend closed
        the connection,
        :class:`~connbridge.errors.FrameTooLarge` for a reply over the
        stream's size limit (announced in its header, before it is read) and
        the codec's :class:`~connbridge.errors.PickleError` for a reply the
        allowlist refuses. After any of these but ``PickleError`` the
        stream is over.
        """
        if self.finished:
            raise RuntimeError("the stream was finished")
        deadline = self._deadline
        idle = idle_timeout is not None and self._loop.time() + idle_timeout < deadline
        if idle:
            assert idle_timeout is not None
            deadline = self._loop.time() + idle_timeout
        try:
            data = await self._conn.recv_bytes(deadline=deadline)
        except TimeoutError:
            if idle:
                raise StreamIdle(f"no reply for {idle_timeout} s") from None
            raise CallTimeout("the stream ran past its timeout") from None
        self.count += 1
        self.last_size = len(data)
        return self._loads(data)

    def finish(self) -> None:
        """Say that the last reply was read: the end was provable (a sentinel, a count)."""
        self.finished = True
