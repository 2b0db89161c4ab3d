"""The ``/ws`` calls protocol: many calls on one socket, answered as each is done.

Each call request is a text message ``{"id": <any JSON>, "backend"?,
"payload", "timeout"?, "result_format"?}``; it is run by
:func:`gateway.calls.run_call`, exactly as ``POST /compute`` runs it. A
message naming ``"object"`` and ``"method"`` instead of a payload (with
``"args"?``, ``"kwargs"?``) calls a method of a manager backend's object, as
``POST /backends/{name}/objects/{id}/{method}`` does
(:func:`gateway.object_calls.run_method_call`). Either is
answered with ``{"id", "result"}`` or ``{"id", "error": <problem>}`` (the
problem object of the REST API, :func:`gateway.problems.problem_object`) as
soon as it is done, in any order. A message that cannot be read gets an
error reply too, with its ``id`` when one could be read, and the socket
stays open; pointers in ``errors`` are into the message. An ``id`` may be
any JSON value nested at most :data:`ID_MAX_DEPTH` levels: a deeper one is
refused (``invalid-request``, with ``"id": null``) rather than echoed, since
its reply could not be written.

A ``Request-Timeout`` header on the upgrade bounds each call on the socket
(see :mod:`gateway.deadlines`), as it bounds one REST call.

At most ``max_in_flight`` calls run at once: at the bound the reader stops
reading from the socket (uvicorn then stops reading from the TCP
connection), so a fast client is slowed down, never refused.

When the server drains (:attr:`~gateway.websocket.link.Link.drain`), the
reader stops reading new calls; the calls in flight get ``shutdown_grace``
seconds to finish (a call still running then is answered with a
``shutting-down`` error), every reply is sent, and the socket is closed
with 1001 ``shutting-down: ...``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from connbridge.errors import PoolClosed

from ..auth import Principal
from ..body import parse_json
from ..calls import CallRequest, parse_call, run_call
from ..object_calls import MethodCall, parse_method_call, run_method_call
from ..problems import INTERNAL_ERROR, InvalidRequest, problem_object
from ..state import Backend, GatewayState
from .link import Close, Link, reason, too_big

__all__ = ["CALLS_ROUTE", "ID_MAX_DEPTH", "Calls"]

logger = logging.getLogger("connbridge.gateway")

#: The route template (also the ``endpoint`` label of ``connbridge_websocket_connections``).
CALLS_ROUTE: Final = "/ws"

#: The deepest nesting of containers accepted in a call's ``id``.
ID_MAX_DEPTH: Final = 32

_MISSING: Final = object()

#: The close of a drained ``/ws`` socket, once its calls are answered.
DRAINED: Final = Close(
    1001, reason("shutting-down", "the gateway is shutting down; reconnect to make more calls")
)


def _too_deep(value: Any, limit: int = ID_MAX_DEPTH) -> bool:
    """True if ``value`` nests more than ``limit`` containers (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is list or kind is dict:
            if depth >= limit:
                return True
            children = item if kind is list else item.values()
            stack.extend((child, depth + 1) for child in children)
    return False


def _dumps(message: dict[str, Any]) -> str:
    try:
        return orjson.dumps(message).decode("utf-8")
    except orjson.JSONEncodeError:
        # An ``id`` holding an integer beyond 64 bits (the parser keeps those
        # exact); results never do, the codec tags them.
        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class Calls:
    """The calls of one ``/ws`` socket: the reader is a worker of its :class:`Link`.

    ``note_in_flight`` is told the number of calls running each time one starts;
    ``request_timeout`` is the upgrade's ``Request-Timeout`` header (seconds),
    which bounds each call.
    """

    def __init__(
        self,
        link: Link,
        state: GatewayState,
        principal: Principal,
        note_in_flight: Callable[[int], None],
        *,
        request_timeout: float | None = None,
    ) -> None:
        self.link = link
        self.request_timeout = request_timeout
        self.state = state
        self.principal = principal
        self.in_flight = 0
        self._note_in_flight = note_in_flight
        self._slots = asyncio.Semaphore(link.settings.max_in_flight)
        self._loop = asyncio.get_running_loop()
        #: The tasks of the calls running in :meth:`_run`: those the cutoff stops.
        self._running: set[asyncio.Task[Any]] = set()
        #: The tasks that the cutoff cancelled and that have not seen it yet.
        self._cut: set[asyncio.Task[Any]] = set()
        #: Set once the grace after a drain is over: no call runs any more.
        self._expired = False

    async def read(self) -> None:
        """Read and run calls until the client goes, or until the server drains.

        The calls run in a task group: when the link stops the reader, the
        calls still running are cancelled with it. On a drain the reading
        stops, the calls in flight finish (within ``shutdown_grace``) and
        the link ends with :data:`DRAINED`.
        """
        drain = self.link.drain
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(self._read(group))
            if drain is None:
                return
            waiter = asyncio.ensure_future(drain.wait())
            try:
                await asyncio.wait({reading, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if reading.done():
                return
            # A cancelled child does not stop its group: the calls go on.
            reading.cancel()
            cutoff = self._loop.call_later(
                self.state.settings.gateway.shutdown_grace, self._cut_off
            )
        cutoff.cancel()
        self.link.end(DRAINED)

    def _cut_off(self) -> None:
        """The grace is over: cancel every call still running (each answers ``shutting-down``)."""
        self._expired = True
        for task in self._running:
            self._cut.add(task)
            task.cancel()

    async def _read(self, group: asyncio.TaskGroup) -> None:
        """Read call requests until the client goes, with at most ``max_in_flight`` running."""
        websocket, link, slots = self.link.websocket, self.link, self._slots
        most = link.settings.max_message_bytes
        while True:
            # Backpressure: no receive() until a call is done, so uvicorn
            # stops reading the TCP connection and the client's sends wait.
            await slots.acquire()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                link.gone(message.get("code", 1005))
                return
            text = message.get("text")
            if text is None:
                slots.release()
                error = InvalidRequest(
                    "send each call as a text message holding a JSON object",
                    [{"detail": "binary messages are not supported", "pointer": "#"}],
                )
                await link.outbox.put(self._error(None, error, None)[0])
                continue
            data = text.encode("utf-8")
            if len(data) > most:
                link.end(too_big(len(data), most))
                return
            self.in_flight += 1
            self._note_in_flight(self.in_flight)
            group.create_task(self._call(data))

    async def _call(self, data: bytes) -> None:
        ident: Any = None
        backend: Backend | None = None
        started = time.perf_counter()
        try:
            try:
                body = parse_json(data)
                if type(body) is dict:
                    ident = body.pop("id", _MISSING)
                    if ident is _MISSING:
                        ident = None
                        raise InvalidRequest(
                            "a call needs an 'id', echoed in its reply",
                            [{"detail": "'id' is required", "pointer": "#/id"}],
                        )
                    if _too_deep(ident):
                        ident = None
                        raise InvalidRequest(
                            f"a call's 'id' may nest at most {ID_MAX_DEPTH} levels",
                            [{"detail": "'id' is nested too deeply", "pointer": "#/id"}],
                        )
                call: CallRequest | MethodCall
                if type(body) is dict and "object" in body:
                    call = parse_method_call(body, message=True)
                else:
                    call = parse_call(body)
                backend = self.state.backend_for(self.principal, call.backend)
                answer = await self._run(backend, call)
                reply = _dumps({"id": ident, "result": answer["result"]})
                status = 200
            except Exception as exc:
                reply, status = self._error(ident, exc, backend)
            self.state.metrics.observe_request(
                CALLS_ROUTE,
                backend.name if backend is not None else "",
                status,
                time.perf_counter() - started,
            )
            await self.link.outbox.put(reply)
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _run(self, backend: Backend, call: CallRequest | MethodCall) -> dict[str, Any]:
        # The cutoff cancels the task as asyncio.timeout() would; it is not
        # used here because it asks for the running loop (on Python 3.11 a
        # getpid() system call) on every call, for a limit that only a drain sets.
        if self._expired:
            raise PoolClosed("the gateway shut down before the call started")
        task = asyncio.current_task(self._loop)
        assert task is not None  # every call runs in a task of the reader's group
        self._running.add(task)
        cut = False
        try:
            try:
                limit = self.request_timeout
                if isinstance(call, CallRequest):
                    return await run_call(self.state, backend, call, request_timeout=limit)
                return await run_method_call(
                    self.state, backend, call.object, call.method, call, request_timeout=limit
                )
            finally:
                self._running.discard(task)
                if task in self._cut:
                    self._cut.discard(task)
                    # Ours, unless something else cancelled the task as well.
                    cut = task.uncancel() == 0
        except asyncio.CancelledError:
            if cut:
                raise PoolClosed("the gateway shut down before the call finished") from None
            raise

    def _error(self, ident: Any, exc: Exception, backend: Backend | None) -> tuple[str, int]:
        """The error reply for ``exc`` (the problem object of the REST API), and its status."""
        row, problem, _ = problem_object(
            exc,
            instance=CALLS_ROUTE,
            request_id=self.link.request_id,
            backend=backend.name if backend is not None else None,
        )
        if row is INTERNAL_ERROR:
            logger.error(
                "websocket call failed (request id %s)", self.link.request_id, exc_info=exc
            )
        return _dumps({"id": ident, "error": problem}), row.status
