"""connbridge.manager: replies of the managers protocol, the inert stand-ins, the client.

Pickles of the stand-ins are made by the stdlib itself (a real ``Token``, a
real proxy's reduction), each protocol 0-5, so the unpickler reads what
managers really send. The client runs against a real manager in a
subprocess (``tests/servers/manager.py``). The pool's ``prepare`` hook (how
the client switches its method-call connections) is shown on a plain Listener.
"""

from __future__ import annotations

import asyncio
import pickle
import queue
import socket
from multiprocessing import managers
from typing import Any

import pytest

from connbridge.errors import (
    BackendUnavailable,
    ManagerFailure,
    ManagerProtocolError,
    ManagerRaised,
    PickleError,
    ProtocolError,
    RefusedGlobal,
)
from connbridge.manager import (
    SUBSTITUTES,
    ManagerClient,
    NestedProxy,
    ProxyReply,
    Token,
    find_nested,
    read_reply,
)
from connbridge.pool import Pool
from connbridge.unpickler import loads as default_loads
from connbridge.unpickler import make_loads
from tests.conftest import SERVERS

pytestmark = pytest.mark.timeout(60)

MANAGER = str(SERVERS / "manager.py")
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
loads = make_loads(substitutes=SUBSTITUTES)


class Reduced:
    """Pickles exactly as a proxy does: ``RebuildProxy(func, token, serializer, kwds)``."""

    def __init__(self, func: Any, token: Any, kwds: dict[str, Any]) -> None:
        self.args = (func, token, "pickle", kwds)

    def __reduce__(self) -> tuple[Any, ...]:
        return (managers.RebuildProxy, self.args)


def silent_address() -> tuple[str, int]:
    # An address nobody listens on: any connection to it would fail loudly.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_token_loads_as_plain_data(protocol):
    token = managers.Token("Child", silent_address(), "7f00")
    reply = loads(pickle.dumps(("#PROXY", (("a", "b"), token)), protocol))
    value = read_reply(reply)
    assert isinstance(value, ProxyReply)
    assert type(value.token) is Token
    assert (value.token.typeid, value.token.id, value.exposed) == ("Child", "7f00", ("a", "b"))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("func", [managers.AutoProxy, managers.DictProxy, managers.ListProxy])
def test_rebuild_proxy_builds_nothing(protocol, func):
    token = managers.Token("dict", silent_address(), "7f01")
    value = loads(pickle.dumps({"k": [Reduced(func, token, {"exposed": ("get",)})]}, protocol))
    nested = value["k"][0]  # type: ignore[index]
    assert isinstance(nested, NestedProxy)
    assert nested.token.id == "7f01" and nested.exposed == ("get",)
    assert find_nested(value) == [nested]


def test_without_substitutes_the_manager_globals_are_refused():
    token = managers.Token("dict", None, "7f01")
    with pytest.raises(RefusedGlobal):
        default_loads(pickle.dumps(token))
    with pytest.raises(RefusedGlobal):
        default_loads(pickle.dumps(Reduced(managers.AutoProxy, token, {})))


def test_hostile_stand_in_arguments_are_refused():
    # RebuildProxy with something other than a proxy type and a token.
    with pytest.raises(PickleError):
        loads(pickle.dumps(Reduced(managers.Token, managers.Token("x", None, "1"), {})))
    with pytest.raises(PickleError):
        loads(pickle.dumps(Reduced(managers.AutoProxy, "not a token", {})))
    # A token whose id is not a string (state written by hand).
    honest = pickle.dumps(managers.Token("x", None, "1"), 2)
    forged = honest.replace(b"X\x01\x00\x00\x001", b"K\x01")
    assert forged != honest and type(loads(honest)) is Token
    with pytest.raises(PickleError, match="must be strings"):
        loads(forged)


def test_queue_exceptions_load_as_themselves():
    assert type(loads(pickle.dumps(queue.Empty()))) is queue.Empty
    assert type(loads(pickle.dumps(queue.Full()))) is queue.Full


def test_substitutes_never_replace_a_default_entry():
    table_loads = make_loads(substitutes={"builtins:bytearray": list})
    assert type(table_loads(pickle.dumps(bytearray(b"ab"), 2))) is bytearray
    with pytest.raises(ValueError, match="module:qualname"):
        make_loads(substitutes={"nocolon": list})


def test_read_reply():
    assert read_reply(("#RETURN", [1])) == [1]
    with pytest.raises(ManagerRaised) as raised:
        read_reply(("#ERROR", KeyError("k")))
    assert isinstance(raised.value.exception, KeyError)
    with pytest.raises(ManagerFailure) as failed:
        read_reply(("#TRACEBACK", "Traceback (most recent call last): secret"))
    assert "secret" not in str(failed.value) and "secret" in failed.value.traceback
    assert failed.value.kind == "#TRACEBACK"
    with pytest.raises(ManagerFailure):
        read_reply(("#UNSERIALIZABLE", "text"))
    for bad in [None, ("#RETURN",), ("#NOPE", 1), ("#ERROR", "not an exception"), ("#PROXY", 1)]:
        with pytest.raises(ManagerProtocolError):
            read_reply(bad)


def test_find_nested_walks_each_container_once():
    token = Token("t", None, "1")
    proxy = NestedProxy(token, None)
    shared = [proxy]
    value = {"a": shared, "b": (shared, {proxy}), "c": shared}
    assert find_nested(value) == [proxy, proxy]  # the list once, the set once
    cycle: list[Any] = []
    cycle.append(cycle)
    assert find_nested(cycle) == []


@pytest.fixture
def manager(start_backend):
    return start_backend(MANAGER)


async def test_client_against_a_real_manager(manager):
    client = ManagerClient(manager.address, authkey=manager.authkey, name="m")
    await client.start()
    try:
        created = await client.create("Counter", (1,))
        assert created.typeid == "Counter" and "incr" in created.exposed
        results = await asyncio.gather(
            *(client.call(created.ident, "echo", (i,)) for i in range(100))
        )
        assert results == list(range(100))
        child = await client.call(created.ident, "child")
        assert isinstance(child, ProxyReply)
        assert await client.call(child.token.id, "value") == 10  # any object, same connections
        assert "incr" in await client.get_methods(child.token.id)
        with pytest.raises(ManagerRaised):
            await client.call(created.ident, "fail")
        with pytest.raises(ManagerFailure):
            await client.create("NoSuchTypeid")
        await client.incref(created.ident)
        for ident in (created.ident, created.ident, child.token.id):
            await client.decref(ident)
        with pytest.raises(ManagerFailure):  # no reference left
            await client.decref(created.ident)
        methods, requests = client.methods.stats(), client.requests.stats()
        assert methods["errors"] == {} and requests["errors"] == {}
        assert methods["opened"] <= methods["max_connections_per_address"] + 1
    finally:
        await client.close()


async def test_pool_prepares_each_pooled_connection_once(start_backend):
    listener = start_backend("listener", mode="threaded")
    prepared: list[object] = []

    async def prepare(conn: Any) -> None:
        # A real exchange, before the pool hands the connection to anyone.
        await conn.send((1, 2))
        assert await conn.recv() == 3
        prepared.append(conn)

    pool = Pool(listener.address, authkey=listener.authkey, prepare=prepare, name="p")
    await pool.start()
    try:
        assert await asyncio.gather(*(pool.call((i, 1)) for i in range(200))) == [
            i + 1 for i in range(200)
        ]
        stats = pool.stats()
        assert len(prepared) == stats["opened"] == len(set(map(id, prepared)))
        assert stats["errors"] == {}
    finally:
        await pool.close()


async def test_a_failed_prepare_marks_the_address_down(start_backend):
    listener = start_backend("listener", mode="threaded")

    async def prepare(conn: Any) -> None:
        raise ProtocolError("this server cannot be switched")

    pool = Pool(listener.address, authkey=listener.authkey, prepare=prepare, name="p")
    await pool.start()
    try:
        with pytest.raises(BackendUnavailable, match="cannot be switched"):
            await pool.call((1, 2), timeout=5)
        assert pool.stats()["errors"].get("prepare", 0) >= 1
        assert not pool.ready
    finally:
        await pool.close()
