"""The shared objects the gateway holds on one manager backend, and their references.

A manager keeps an object alive while references to it exist. The gateway
holds references for its clients: **one per create**, and one per method
reply that is a proxy (``#PROXY``: the server made the object for us). An
:class:`ObjectTable` counts them per object id (two creates of a typeid
whose callable returns one shared queue give the same id, held twice) and
gives them back (``decref``):

* one on ``DELETE``: the object stays addressable while references remain;
* all of an object unused for ``object_ttl`` seconds (none while a call to
  it runs);
* all of every object when the gateway shuts down.

Ids are the manager's own (``'%x' % id(obj)``). Any caller allowed on the
backend may use any object held on it: an id is not a secret.

Which typeids may be created (``typeids``) and which methods may be called
(the methods the server reports as exposed, narrowed per typeid by
``methods``) is checked here, before anything is sent. Nothing a client
sends names one of the server's own functions: server-level requests are
composed by :class:`~connbridge.manager.ManagerClient` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connbridge.errors import ConnbridgeError, ManagerFailure, ManagerRaised
from connbridge.manager import ManagerClient, NestedProxy, ProxyReply, find_nested

from .problems import BackendRaised, TooManyObjects, TypeidNotAllowed, UnknownMethod, UnknownObject

__all__ = ["Answer", "HeldObject", "ObjectTable"]

logger = logging.getLogger("connbridge.gateway")

#: Longest pause between two looks for expired objects.
_REAP_INTERVAL = 1.0


@dataclass(slots=True)
class HeldObject:
    """One object on the manager and the references the gateway holds on it."""

    ident: str
    typeid: str
    methods: tuple[str, ...]
    refs: int = 1
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    def describe(self, backend: str) -> dict[str, Any]:
        """The JSON of ``GET /backends/{name}/objects/{id}`` (and of a create's 201)."""
        return {
            "id": self.ident,
            "typeid": self.typeid,
            "methods": list(self.methods),
            "backend": backend,
        }

    def reference(self) -> dict[str, Any]:
        """The ``{"$object": ...}`` a method answers with when it returns a shared object."""
        return {"$object": {"id": self.ident, "typeid": self.typeid, "methods": list(self.methods)}}


@dataclass(slots=True)
class Answer:
    """What a method answered: a value, or a shared object the gateway now holds.

    ``nested`` holds the proxies found inside ``value``, by id: each is
    held too (the gateway took a reference with ``incref``).
    """

    value: object = None
    held: HeldObject | None = None
    nested: dict[str, HeldObject] = field(default_factory=dict)

    def render(self, proxy: NestedProxy) -> object:
        """The ``{"$object": ...}`` of a proxy inside the value."""
        return self.nested[proxy.token.id].reference()


class ObjectTable:
    """The objects held on one manager backend (see the module docstring)."""

    def __init__(
        self,
        backend: str,
        client: ManagerClient,
        *,
        typeids: Sequence[str],
        methods: Mapping[str, Sequence[str]],
        object_ttl: float,
        max_objects: int,
    ) -> None:
        self.backend = backend
        self.client = client
        #: ``None``: every typeid may be created.
        self.typeids = None if "*" in typeids else frozenset(typeids)
        self._narrow = {typeid: frozenset(names) for typeid, names in methods.items()}
        self.object_ttl = object_ttl
        self.max_objects = max_objects
        self._objects: dict[str, HeldObject] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._objects)

    def offered(self, typeid: str, exposed: Sequence[str]) -> tuple[str, ...]:
        """The methods clients may call on an object of ``typeid`` that exposes ``exposed``."""
        narrow = self._narrow.get(typeid)
        names = dict.fromkeys(exposed)  # once each, in the server's order
        return tuple(n for n in names if narrow is None or n in narrow)

    def _hold(self, ident: str, typeid: str, exposed: Sequence[str]) -> HeldObject:
        held = self._objects.get(ident)
        if held is None:
            held = HeldObject(ident, typeid, self.offered(typeid, exposed), refs=0)
            self._objects[ident] = held
        held.refs += 1
        held.last_used = time.monotonic()
        return held

    def get(self, ident: str) -> HeldObject:
        """The object ``ident``.

        Raises:
            UnknownObject: the gateway holds no object by that id.
        """
        held = self._objects.get(ident)
        if held is None:
            raise UnknownObject(
                f"backend {self.backend!r} has no object {ident!r} held by the gateway "
                "(never created, released, or expired)"
            )
        return held

    # what clients do

    async def create(
        self, typeid: str, args: Sequence[Any], kwargs: Mapping[str, Any], *, timeout: float | None
    ) -> HeldObject:
        """Create an object of ``typeid`` on the manager; the gateway holds its reference.

        Raises:
            TypeidNotAllowed: ``typeid`` is not in the backend's ``typeids``.
            TooManyObjects: ``max_objects`` are held already.
            BackendRaised, ConnbridgeError: as :meth:`call`.
        """
        if self.typeids is not None and typeid not in self.typeids:
            raise TypeidNotAllowed(
                f"backend {self.backend!r} does not let clients create {typeid!r}",
                pointer="#/typeid",
            )
        self._check_room()
        created = await self._raising(self.client.create(typeid, args, kwargs, timeout=timeout))
        return self._hold(created.ident, typeid, created.exposed)

    async def call(
        self,
        ident: str,
        method: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        timeout: float | None,
    ) -> Answer:
        """Call ``method`` of ``ident``; a shared object it returns, or holds, is held too.

        Raises:
            UnknownObject: no such object is held.
            UnknownMethod: the object does not offer ``method``.
            BackendRaised: the method raised (``queue.Empty`` is named ``Empty``).
            ManagerFailure: the manager failed (its traceback is logged, not told).
            ConnbridgeError: the pool's errors (timeout, unavailable, ...).
        """
        held = self.get(ident)
        if method not in held.methods:
            raise UnknownMethod(
                f"object {ident!r} ({held.typeid}) offers no method {method!r}; "
                f"it offers: {', '.join(held.methods) or 'none'}"
            )
        held.in_flight += 1
        held.last_used = time.monotonic()
        try:
            value = await self._raising(
                self.client.call(ident, method, args, kwargs, timeout=timeout)
            )
        finally:
            held.in_flight -= 1
            held.last_used = time.monotonic()
        if isinstance(value, ProxyReply):
            # The server made the object and holds one reference for us.
            if len(self._objects) >= self.max_objects and value.token.id not in self._objects:
                await self._give_back(value.token.id, 1)
                self._check_room()
            return Answer(held=self._hold(value.token.id, value.token.typeid, value.exposed))
        answer = Answer(value)
        for proxy in find_nested(value):
            if proxy.token.id not in answer.nested:
                answer.nested[proxy.token.id] = await self._adopt(proxy, timeout)
        return answer

    async def _adopt(self, proxy: NestedProxy, timeout: float | None) -> HeldObject:
        """Take a reference to a proxy found in a value, as a Python client would."""
        token = proxy.token
        if token.id not in self._objects:
            self._check_room()
        # The configured manager, never the address in the token.
        await self._raising(self.client.incref(token.id, timeout=timeout))
        exposed = proxy.exposed
        if exposed is None:
            try:
                exposed = await self._raising(
                    self.client.get_methods(token.id, token.typeid, timeout=timeout)
                )
            except BaseException:
                await self._give_back(token.id, 1)
                raise
        return self._hold(token.id, token.typeid, exposed)

    async def release(self, ident: str, *, timeout: float | None = None) -> None:
        """Give back one reference (``DELETE``); the last one forgets the object.

        Raises:
            UnknownObject: no such object is held.
            ConnbridgeError: the decref could not be made (the reference is kept).
        """
        held = self.get(ident)
        held.refs -= 1
        if held.refs <= 0:
            del self._objects[ident]
        try:
            await self.client.decref(ident, timeout=timeout)
        except ManagerFailure:
            pass  # the server does not know it (restarted?): nothing is left to give back
        except BaseException:
            # Not given back: still ours, for a retry, the expiry or the shutdown
            # (counted on the entry a concurrent create may have made meanwhile).
            self._objects.setdefault(ident, held).refs += 1
            raise

    # expiry and shutdown

    def start(self) -> None:
        """Start looking for expired objects (in the running loop)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(_REAP_INTERVAL, self.object_ttl / 2))
            await self.expire(time.monotonic())

    async def expire(self, now: float) -> int:
        """Give back every reference of the objects unused since ``now - object_ttl``; how many."""
        stale = [
            held
            for held in self._objects.values()
            if held.in_flight == 0 and now - held.last_used > self.object_ttl
        ]
        for held in stale:
            self._objects.pop(held.ident, None)
        await asyncio.gather(*(self._give_back(held.ident, held.refs) for held in stale))
        if stale:
            logger.info("backend %s: %d unused object(s) released", self.backend, len(stale))
        return len(stale)

    async def close(self) -> None:
        """Stop the expiry and give back every reference held (before the pools close)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        held = list(self._objects.values())
        self._objects.clear()
        await asyncio.gather(*(self._give_back(h.ident, h.refs) for h in held))

    async def _give_back(self, ident: str, refs: int) -> None:
        for _ in range(refs):
            try:
                await self.client.decref(ident)
            except ConnbridgeError as exc:
                logger.warning(
                    "backend %s: could not release object %s: %s", self.backend, ident, exc
                )
                return

    def _check_room(self) -> None:
        if len(self._objects) >= self.max_objects:
            raise TooManyObjects(
                f"the gateway holds {self.max_objects} objects on backend {self.backend!r} "
                "(max_objects); release some"
            )

    @staticmethod
    async def _raising(call: Any) -> Any:
        try:
            return await call
        except ManagerRaised as exc:
            raised = exc.exception
            # Named as the server named it: queue.Empty is "Empty", not "_queue.Empty".
            raise BackendRaised(raised, type_name=type(raised).__name__) from None
