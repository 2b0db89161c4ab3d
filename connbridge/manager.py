"""Speak to ``multiprocessing.managers`` servers (``BaseManager``, ``SyncManager``).

A manager is a Listener with a protocol on top. Every message is a tuple:

* a **server-level request** ``(None, funcname, args, kwds)``, for one of the
  server's own functions (``create``, ``incref``, ``decref``,
  ``get_methods``...), answered by one reply, after which the server closes
  the connection;
* ``accept_connection`` switches a connection, for good, to **serving
  objects**: after its ``('#RETURN', None)`` every request is a method call
  ``(ident, methodname, args, kwds)`` on any object the server holds, and
  every one is answered once.

A reply is ``(kind, value)``: ``#RETURN`` (the value), ``#PROXY`` (the
method returned a shared object: ``(exposed, Token)``), ``#ERROR`` (the
method raised ``value``), ``#TRACEBACK`` or ``#UNSERIALIZABLE`` (the server
failed; ``value`` is its traceback text).

:class:`ManagerClient` keeps two pools to the same addresses: one gives each
server-level request a connection of its own (``replies = "many"``: used
once, then closed), the other holds connections switched once, right after
their handshake, and reused for method calls by anyone. Reference counts
are the caller's business: ``create`` and a ``#PROXY`` reply each leave one
reference on the server that the caller owns, and :meth:`ManagerClient.decref`
gives it back.

Replies are read by the allowlist unpickler with :data:`SUBSTITUTES`: the
manager's ``Token`` becomes the inert :class:`Token` here, and
``RebuildProxy`` (how a proxy nested in a value is pickled) becomes a
function that returns a :class:`NestedProxy` instead of building a proxy,
which would connect to the address inside the token. Nothing in a reply
can make the client connect anywhere. ``queue.Empty`` and ``queue.Full``
load as themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing.managers as _managers
import queue
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .addresses import AddressLike
from .connection import Connection
from .errors import ManagerFailure, ManagerProtocolError, ManagerRaised, PickleError
from .pool import Pool, PoolSettings

__all__ = [
    "SERVER_FUNCTIONS",
    "SUBSTITUTES",
    "Created",
    "ManagerClient",
    "NestedProxy",
    "ProxyReply",
    "Token",
    "find_nested",
    "read_reply",
]

logger = logging.getLogger(__name__)

#: The functions a manager's server offers on a fresh connection. Nothing a
#: client of ours sends can name one: the client composes these requests itself.
SERVER_FUNCTIONS: Final = frozenset(
    {
        "shutdown",
        "create",
        "accept_connection",
        "get_methods",
        "debug_info",
        "number_of_objects",
        "dummy",
        "incref",
        "decref",
    }
)

_MAX_TEXT: Final = 10_000


class Token:
    """A manager's ``Token`` read as plain data: ``typeid``, ``address``, ``id``.

    It stands in for ``multiprocessing.managers.Token`` when replies are
    unpickled; ``address`` is only what the server wrote, never used.
    """

    __slots__ = ("address", "id", "typeid")

    def __init__(self, typeid: object = "", address: object = None, id: object = "") -> None:
        self.__setstate__((typeid, address, id))

    def __setstate__(self, state: object) -> None:
        # The stdlib Token pickles its state as the tuple (typeid, address, id).
        if not (type(state) is tuple and len(state) == 3):
            raise PickleError("a manager Token's state must be (typeid, address, id)")
        typeid, address, ident = state
        if type(typeid) is not str or type(ident) is not str:
            raise PickleError("a manager Token's typeid and id must be strings")
        self.typeid: str = typeid
        self.address = address
        self.id: str = ident

    def __repr__(self) -> str:
        return f"Token(typeid={self.typeid!r}, id={self.id!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyReply:
    """A method's ``#PROXY`` reply: the server created an object for the caller (one reference)."""

    token: Token
    exposed: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class NestedProxy:
    """A proxy found inside a value (pickled as ``RebuildProxy``): no reference is held for it.

    ``exposed`` is known only for auto proxies; ``None`` otherwise.
    """

    token: Token
    exposed: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Created:
    """What ``create`` answered: the object's ``ident`` and the methods it exposes."""

    ident: str
    typeid: str
    exposed: tuple[str, ...]


class _ProxyType:
    """Stands in for a proxy class (or ``AutoProxy``) named by a pickled ``RebuildProxy``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<proxy type {self.name}>"


def _names(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, tuple | list | set | frozenset):
        return None
    names: tuple[object, ...] = tuple(value)
    if not all(type(name) is str for name in names):
        return None
    return names  # type: ignore[return-value]  # all str, checked above


def _rebuild_proxy(func: object, token: object, serializer: object, kwds: object) -> NestedProxy:
    """``RebuildProxy`` as data: the proxy is described, never built (it would connect)."""
    if not isinstance(func, _ProxyType) or not isinstance(token, Token):
        raise PickleError("refused a RebuildProxy call that is not a proxy type and a Token")
    exposed = _names(kwds.get("exposed")) if isinstance(kwds, dict) else None
    return NestedProxy(token, exposed)


def _proxy_type_names() -> frozenset[str]:
    found = {
        name
        for name, obj in vars(_managers).items()
        if isinstance(obj, type) and issubclass(obj, _managers.BaseProxy)
    }
    # Names other Python versions pickle that this one may lack.
    found |= {"AutoProxy", "BaseDictProxy", "BaseListProxy", "DictProxy", "ListProxy"}
    return frozenset(found)


#: The unpickler's stand-ins for a manager's replies (``make_loads(substitutes=...)``).
SUBSTITUTES: Final[Mapping[str, object]] = {
    "multiprocessing.managers:Token": Token,
    "multiprocessing.managers:RebuildProxy": _rebuild_proxy,
    **{f"multiprocessing.managers:{name}": _ProxyType(name) for name in _proxy_type_names()},
    "_queue:Empty": queue.Empty,
    "queue:Empty": queue.Empty,
    "queue:Full": queue.Full,
}


def find_nested(value: object, *, budget: int = 100_000) -> list[NestedProxy]:
    """The :class:`NestedProxy` values inside ``value`` (containers walked, each once).

    At most ``budget`` containers are looked into: a value bigger than that
    is refused later, when it is turned into JSON.
    """
    found: list[NestedProxy] = []
    seen: set[int] = set()
    stack = [value]
    while stack and budget > 0:
        item = stack.pop()
        if type(item) is NestedProxy:
            found.append(item)
        elif isinstance(item, list | tuple | set | frozenset | dict) and id(item) not in seen:
            seen.add(id(item))
            budget -= 1
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
    return found


def read_reply(reply: object) -> object:
    """The value of a manager's reply; a ``#PROXY`` reply as a :class:`ProxyReply`.

    Raises:
        ManagerRaised: ``#ERROR``: the method raised; ``exception`` is what it raised.
        ManagerFailure: ``#TRACEBACK`` or ``#UNSERIALIZABLE``: the server failed.
        ManagerProtocolError: not a reply of the protocol.
    """
    if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not str:
        raise ManagerProtocolError("the manager's reply is not a (kind, value) pair")
    kind, value = reply
    if kind == "#RETURN":
        return value
    if kind == "#PROXY":
        if type(value) is tuple and len(value) == 2 and isinstance(value[1], Token):
            exposed = _names(value[0])
            if exposed is not None:
                return ProxyReply(value[1], exposed)
        raise ManagerProtocolError("the manager's #PROXY reply is not (exposed, Token)")
    if kind == "#ERROR":
        if isinstance(value, BaseException):
            raise ManagerRaised(value)
        raise ManagerProtocolError("the manager's #ERROR reply does not carry an exception")
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        text = value if type(value) is str else repr(value)
        raise ManagerFailure(kind, text[:_MAX_TEXT])
    raise ManagerProtocolError("the manager's reply has an unknown kind")


async def _serve_objects(conn: Connection) -> None:
    """Switch a fresh connection to serving objects (``accept_connection``), once."""
    await conn.send((None, "accept_connection", ("connbridge",), {}))
    reply = await conn.recv()
    if reply != ("#RETURN", None):
        read_reply(reply)  # a failure raises as itself
        raise ManagerProtocolError("the manager did not accept the connection for method calls")


class ManagerClient:
    """A client of one manager (one address, or replicas of it), over two pools.

    ``settings`` apply to both pools; the pool of server-level requests
    always uses each connection once. ``start()`` first, ``close()`` last.
    """

    def __init__(
        self,
        addresses: AddressLike | Sequence[AddressLike],
        *,
        authkey: bytes | None,
        settings: PoolSettings | None = None,
        name: str = "default",
    ) -> None:
        settings = settings or PoolSettings()
        self.name = name
        #: Method calls, on connections switched once with ``accept_connection``.
        self.methods = Pool(
            addresses,
            authkey=authkey,
            settings=dataclasses.replace(settings, replies="one"),
            name=name,
            substitutes=SUBSTITUTES,
            prepare=_serve_objects,
        )
        #: Server-level requests, each on a connection of its own.
        self.requests = Pool(
            addresses,
            authkey=authkey,
            settings=dataclasses.replace(settings, replies="many"),
            name=f"{name}.requests",
            substitutes=SUBSTITUTES,
        )

    async def start(self) -> None:
        """Start both pools (a manager that is down is no error; see :meth:`Pool.start`)."""
        await self.methods.start()
        await self.requests.start()

    async def close(self, grace: float | None = None) -> None:
        """Close both pools, letting calls in flight finish within ``grace`` seconds."""
        await self.methods.close(grace)
        await self.requests.close(grace)

    async def _request(
        self, funcname: str, args: tuple[Any, ...], kwds: dict[str, Any], timeout: float | None
    ) -> object:
        reply = await self.requests.call((None, funcname, args, kwds), timeout=timeout)
        try:
            return read_reply(reply)
        except ManagerFailure as exc:
            logger.warning(
                "manager %s: %s failed (%s):\n%s", self.name, funcname, exc.kind, exc.traceback
            )
            raise

    async def create(
        self,
        typeid: str,
        args: Sequence[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Created:
        """Create an object of ``typeid``; the caller owns the one reference the server keeps.

        Raises:
            ManagerRaised, ManagerFailure, ManagerProtocolError: see :func:`read_reply`
                (an unknown typeid is a ``ManagerFailure``).
            ConnbridgeError: the pool's errors (see :meth:`Pool.call`).
        """
        value = await self._request("create", (typeid, *args), dict(kwds or {}), timeout)
        if type(value) is tuple and len(value) == 2 and type(value[0]) is str:
            exposed = _names(value[1])
            if exposed is not None:
                return Created(value[0], typeid, exposed)
        raise ManagerProtocolError("the manager's answer to create is not (ident, exposed)")

    async def incref(self, ident: str, *, timeout: float | None = None) -> None:
        """Take one more reference to ``ident`` (raises as :meth:`create`)."""
        await self._request("incref", (ident,), {}, timeout)

    async def decref(self, ident: str, *, timeout: float | None = None) -> None:
        """Give back one reference to ``ident`` (raises as :meth:`create`)."""
        await self._request("decref", (ident,), {}, timeout)

    async def get_methods(
        self, ident: str, typeid: str = "", *, timeout: float | None = None
    ) -> tuple[str, ...]:
        """The methods the object ``ident`` exposes (raises as :meth:`create`)."""
        # The server takes a Token and reads only its id; ours carries no address.
        token = _managers.Token(typeid, None, ident)
        value = await self._request("get_methods", (token,), {}, timeout)
        names = _names(value)
        if names is None:
            raise ManagerProtocolError("the manager's answer to get_methods is not a list of names")
        return names

    async def call(
        self,
        ident: str,
        method: str,
        args: Sequence[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> object:
        """Call ``method`` of the object ``ident``; a shared object it returns is a ``ProxyReply``.

        The caller checks that ``method`` is exposed: the server answers an
        unexposed name with ``#TRACEBACK``, or serves a fallback for it.

        Raises:
            ManagerRaised: the method raised (``exception`` says what).
            ManagerFailure, ManagerProtocolError: see :func:`read_reply`.
            ConnbridgeError: the pool's errors (see :meth:`Pool.call`).
        """
        reply = await self.methods.call(
            (ident, method, tuple(args), dict(kwds or {})), timeout=timeout
        )
        try:
            return read_reply(reply)
        except ManagerFailure as exc:
            logger.warning(
                "manager %s: %s() failed (%s):\n%s", self.name, method, exc.kind, exc.traceback
            )
            raise
