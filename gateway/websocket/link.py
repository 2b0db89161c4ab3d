"""The plumbing of one accepted WebSocket: its bounded outbox, its tasks, how it ends.

Both protocols (:mod:`gateway.websocket.calls`, :mod:`gateway.websocket.session`)
run as *workers* of a :class:`Link`: coroutines that read the socket or a
backend and put text messages in the link's :class:`Outbox`. The link runs
them next to the writer and a send watchdog, and the first of them to decide
how the socket ends (:meth:`Link.end`, :meth:`Link.gone`) stops the others.

Flow control and memory
    Outgoing messages wait in a queue of ``send_queue`` messages
    (:class:`~gateway.server.loop_queue.LoopQueue`); a producer waits for
    room, which in turn stops the reading of calls or of the backend.
    uvicorn's ``send`` waits while the transport's buffer is over its
    high-water mark, i.e. while the client does not read; a client that
    reads nothing for ``send_timeout`` seconds while a message waits to be
    written is disconnected with 1008 (``slow-client``), without waiting to
    flush what is queued. The gateway's server protocol
    (:mod:`gateway.server.websocket_protocol`) bounds the transport's buffer
    itself, pongs included, and drops such a client on its own too; this
    watchdog keeps the bound under any server. The writer sends the queued
    messages one after the other without waiting in between, so that the
    gateway's protocol writes those of one loop iteration together.

Draining
    Under the gateway's own server protocol (:mod:`gateway.server.websocket_protocol`)
    the scope carries the ``connbridge.drain`` extension, an event set when
    the server shuts down: :attr:`Link.drain`. ``/ws`` then stops reading
    calls, answers those in flight and closes with 1001; a session closes
    with 1012 (:meth:`Link.close_on_drain`). Under another server the event
    is absent and the server's own shutdown applies.

Each close reason starts with a slug (the problem type's for errors that
have one) and is cut to the 123 bytes a close frame can carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..context import request_context
from ..problems import describe
from ..server.loop_queue import LoopQueue
from ..server.websocket_protocol import DRAIN_EXTENSION
from ..settings import WebSocketSettings

__all__ = [
    "Close",
    "Link",
    "Outbox",
    "SlowClient",
    "Worker",
    "problem_reason",
    "reason",
    "too_big",
]

logger = logging.getLogger("connbridge.gateway")

#: A task of a link: what it is called in the log, and its coroutine.
Worker: TypeAlias = tuple[str, Coroutine[Any, Any, None]]

#: RFC 6455 allows 125 bytes of close payload, two of which are the code.
_MAX_REASON: Final = 123


def reason(slug: str, detail: str) -> str:
    """``"slug: detail"`` cut to the 123 bytes a close frame can carry."""
    text = f"{slug}: {detail}"
    data = text.encode("utf-8")
    if len(data) <= _MAX_REASON:
        return text
    return data[: _MAX_REASON - 3].decode("utf-8", "ignore") + "..."


def problem_reason(exc: BaseException) -> str:
    """The close reason for an error: its problem type's slug and detail."""
    row, detail, _, _ = describe(exc)
    return reason(row.slug, detail)


@dataclass(frozen=True, slots=True)
class Close:
    """How a socket ends: the close frame to send, after the queued messages or at once."""

    code: int
    reason: str
    #: Send what is queued first (False: the client does not read; do not wait for it).
    flush: bool = True


def too_big(size: int, most: int) -> Close:
    """The close for a message over ``max_message_bytes``."""
    return Close(1009, reason("message-too-big", f"{size} bytes; the limit is {most}"))


class SlowClient(Exception):
    """Nothing could be written to the client for ``send_timeout`` seconds."""


class Outbox:
    """The bounded queue of one socket's outgoing text messages, and its writer.

    Producers wait in :meth:`put` while the queue is full. :meth:`run` writes
    the messages in order, and :meth:`watch` ends the socket when one write
    has waited longer than ``timeout``.
    """

    def __init__(self, websocket: WebSocket, limit: int, timeout: float) -> None:
        self._websocket = websocket
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        # None, after finish(), wakes a writer that waits on an empty queue.
        self._queue: LoopQueue[str | None] = LoopQueue(self._loop, limit)
        self._final: Close | None = None
        #: Loop time at which the write in progress started; None between writes.
        self._writing_since: float | None = None

    async def put(self, text: str) -> None:
        """Queue one message, waiting for room."""
        await self._queue.put(text)

    def finish(self, close: Close) -> None:
        """Send ``close`` once every queued message is written; :meth:`run` then returns.

        Called once the producers are stopped, so nothing is queued after it.
        """
        self._final = close
        if self._queue.empty():
            self._queue.put_nowait(None)

    async def run(self) -> None:
        """Write the queued messages until :meth:`finish`.

        Raises:
            WebSocketDisconnect: the client is gone.
        """
        queue, loop, send = self._queue, self._loop, self._websocket.send
        while True:
            final = self._final
            if final is not None and queue.empty():
                self._writing_since = loop.time()
                await self._websocket.close(final.code, final.reason)
                self._writing_since = None
                return
            text = await queue.get()
            if text is None:
                continue  # finish() was called: the check above now holds
            self._writing_since = loop.time()
            await send({"type": "websocket.send", "text": text})
            self._writing_since = None

    async def watch(self) -> None:
        """Raise :class:`SlowClient` once a single write has waited ``timeout`` seconds.

        Wakes once per ``timeout`` at most, so the writes themselves carry no timer.
        """
        timeout, loop = self._timeout, self._loop
        while True:
            since = self._writing_since
            now = loop.time()
            if since is not None and now - since >= timeout:
                raise SlowClient
            await asyncio.sleep(timeout if since is None else since + timeout - now)


class Link:
    """One accepted socket: its outbox, the tasks that serve it, and how it ends.

    :meth:`serve` runs the workers and the writer until the first of them
    decides how the socket ends (:meth:`end`), then stops the others and
    sends the close frame (after the queued messages, unless the client is
    not reading them). Every ending is counted in ``closes`` by close code.
    """

    def __init__(
        self,
        websocket: WebSocket,
        endpoint: str,
        settings: WebSocketSettings,
        closes: Counter[int],
    ) -> None:
        self.websocket = websocket
        self.endpoint = endpoint
        self.settings = settings
        self._closes = closes
        self.outbox = Outbox(websocket, settings.send_queue, settings.send_timeout)
        self._ending: asyncio.Future[Close | None] = asyncio.get_running_loop().create_future()
        context = request_context(websocket.scope)
        self.request_id = context.request_id if context is not None else None
        #: The code of the client's close frame, once it is gone.
        self.client_code = 1006
        drain = (websocket.scope.get("extensions") or {}).get(DRAIN_EXTENSION)
        #: Set when the server shuts down; ``None`` when the server cannot tell.
        self.drain: asyncio.Event | None = drain if isinstance(drain, asyncio.Event) else None

    async def close_on_drain(self, close: Close) -> None:
        """A worker: end the socket with ``close`` once the server drains (started with one)."""
        if self.drain is None:
            await asyncio.Future()  # pragma: no cover - only started with a drain event
        else:
            await self.drain.wait()
            self.end(close)

    def end(self, close: Close | None) -> None:
        """Decide how the socket ends (``None``: the client is gone); the first decision wins."""
        if not self._ending.done():
            self._ending.set_result(close)

    def gone(self, code: int) -> None:
        """The client closed the socket with ``code``, or went without a close frame (1006)."""
        if not self._ending.done():
            self.client_code = code
            self._ending.set_result(None)

    async def _guard(self, work: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await work
        except SlowClient:
            timeout = self.settings.send_timeout
            self.end(
                Close(
                    1008,
                    reason("slow-client", f"nothing could be sent for {timeout:g} s"),
                    flush=False,
                )
            )
        except WebSocketDisconnect as exc:
            self.gone(exc.code)
        except Exception:
            logger.exception(
                "websocket %s (request id %s): %s failed", self.endpoint, self.request_id, what
            )
            self.end(Close(1011, reason("internal-error", "see the gateway log")))

    async def serve(self, *workers: Worker) -> Close | None:
        """Run ``workers`` with the writer until the socket ends; returns how it ended.

        A cancelled handler (server shutdown) cancels every task: the task
        groups see to it.
        """
        async with asyncio.TaskGroup() as group:
            writer = group.create_task(self._guard(self.outbox.run(), "writer"))
            ending = await self._run(workers)
            self._closes[ending.code if ending is not None else self.client_code] += 1
            if ending is None:
                writer.cancel()
            elif ending.flush:
                # The writer sends what is queued, then the close frame; the
                # watchdog is gone, so the wait is bounded here.
                self.outbox.finish(ending)
                done, _ = await asyncio.wait({writer}, timeout=self.settings.send_timeout)
                if not done:
                    writer.cancel()
            else:
                writer.cancel()
                await asyncio.wait({writer})
                await self._close_now(ending)
        return ending

    async def _run(
        self, workers: tuple[tuple[str, Coroutine[Any, Any, None]], ...]
    ) -> Close | None:
        # The workers and the watchdog, until the first decision; then they stop.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._guard(self.outbox.watch(), "send watchdog"))]
            tasks += [group.create_task(self._guard(work, what)) for what, work in workers]
            ending = await self._ending
            for task in tasks:
                task.cancel()
        return ending

    async def _close_now(self, close: Close) -> None:
        # The client does not read: the close frame may never get out.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.send_timeout):
                await self.websocket.close(close.code, close.reason)
