"""Manager backends: shared objects of real ``multiprocessing.managers`` servers over REST and /ws.

The managers run in subprocesses (``tests/servers/manager.py``) under Python
3.8, 3.11, 3.12 and 3.13; 3.8 and 3.11 authenticate with the legacy MD5
handshake, 3.12+ with ``{sha256}``. Object counts are read natively from
the manager (``_number_of_objects``), by a stdlib client in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import select
import socket
import threading
import time
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import backend_config, problem_type, serve_gateway
from ws_support import open_ws, recv_json, until_closed

from tests.conftest import INTERPRETER_PARAMS, SERVERS, stdlib_connect

pytestmark = pytest.mark.timeout(120)

MANAGER = str(SERVERS / "manager.py")
HOSTILE_MANAGER = str(SERVERS / "hostile_manager.py")
#: The interpreters the issue names: MD5 (3.8, 3.11) and {sha256} (3.12, 3.13) handshakes.
VERSIONS = [p for p in INTERPRETER_PARAMS if p.id in ("py3.8", "py3.11", "py3.12", "py3.13")]


class Native(BaseManager):
    """A stdlib client of tests/servers/manager.py, as a Python user would write it."""


Native.register("get_queue")
Native.register("get_results")


def native(backend: Any) -> Native:
    host, _, port = backend.address.rpartition(":")
    manager = Native(address=(host, int(port)), authkey=backend.authkey)
    manager.connect()
    return manager


def objects_on(backend: Any) -> int:
    manager = native(backend)
    return int(manager._number_of_objects())  # type: ignore[attr-defined]


def manager_config(backend: Any, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    extra.setdefault("typeids", ["*"])
    return {"backends": {"m": backend_config(backend, tmp_path, kind="manager", **extra)}}


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == problem_type(slug), body
    return body


@pytest.fixture(params=VERSIONS)
def base_manager(request, start_backend):
    return start_backend(MANAGER, python=request.param)


@pytest.fixture(params=VERSIONS)
def sync_manager(request, start_backend):
    return start_backend(MANAGER, python=request.param, args=["--kind", "sync"])


@pytest.fixture
def manager(start_backend):
    return start_backend(MANAGER)


async def test_base_manager_objects(base_manager, tmp_path):
    before = objects_on(base_manager)
    settings = manager_config(base_manager, tmp_path, typeids=["Counter", "get_queue"])
    async with serve_gateway(settings) as gw:
        c = gw.client
        response = await c.post("/backends/m/objects", json={"typeid": "Counter", "args": [5]})
        assert response.status_code == 201, response.text
        counter = response.json()
        assert counter["typeid"] == "Counter" and counter["backend"] == "m"
        assert counter["methods"] == [
            "incr",
            "value",
            "echo",
            "fail",
            "lookup",
            "unpicklable",
            "child",
        ]
        ident = counter["id"]
        base = f"/backends/m/objects/{ident}"
        assert (await c.get(base)).json() == counter
        answer = (await c.post(f"{base}/incr", json={"args": [2]})).json()
        assert answer["result"] == 7 and answer["backend"] == "m" and answer["elapsed_ms"] >= 0
        assert (await c.post(f"{base}/incr", json={"kwargs": {"by": 3}})).json()["result"] == 10
        assert (await c.post(f"{base}/value")).json()["result"] == 10  # no body at all
        tagged = {"args": [{"$tuple": [1, {"$bytes": "AP8="}]}], "result_format": "tagged"}
        assert (await c.post(f"{base}/echo", json=tagged)).json()["result"] == tagged["args"][0]

        # A method that returns a shared object (#PROXY): addressable too.
        child = (await c.post(f"{base}/child")).json()["result"]["$object"]
        assert child["typeid"] == "Child" and "value" in child["methods"]
        assert objects_on(base_manager) == before + 2
        child_value = await c.post(f"/backends/m/objects/{child['id']}/value")
        assert child_value.json()["result"] == 100

        # Errors.
        body = assert_problem(
            await c.post(f"{base}/fail", json={"args": ["bad"]}), 502, "backend-exception"
        )
        assert body["exception"] == {"type": "ValueError", "args": ["bad", 42]}
        body = assert_problem(
            await c.post(f"{base}/lookup", json={"args": ["zz"]}), 502, "backend-exception"
        )
        assert body["exception"] == {"type": "KeyError", "args": ["zz"]}
        body = assert_problem(await c.post(f"{base}/unpicklable"), 502, "manager-failure")
        assert "Traceback" not in str(body) and "lambda" not in str(body)
        body = assert_problem(
            await c.post("/backends/m/objects", json={"typeid": "Counter", "args": [-1]}),
            502,
            "manager-failure",
        )
        assert "Traceback" not in str(body) and "counter starts" not in str(body)
        assert_problem(await c.post(f"{base}/nope"), 404, "unknown-method")
        assert_problem(await c.post(f"{base}/__repr__"), 404, "unknown-method")
        assert_problem(await c.post("/backends/m/objects/abc/value"), 404, "unknown-object")
        assert_problem(await c.get("/backends/m/objects/abc"), 404, "unknown-object")
        body = assert_problem(
            await c.post("/backends/m/objects", json={"typeid": "get_results"}),
            422,
            "typeid-not-allowed",
        )
        assert body["errors"][0]["pointer"] == "#/typeid"
        assert_problem(
            await c.post("/backends/m/objects", json={"args": []}), 422, "invalid-request"
        )
        assert_problem(
            await c.post(f"{base}/incr", json={"args": [{"$nope": 1}]}), 422, "invalid-payload"
        )
        # The queue: an empty get is Empty, by its plain name.
        queue = (await c.post("/backends/m/objects", json={"typeid": "get_queue"})).json()
        body = assert_problem(
            await c.post(f"/backends/m/objects/{queue['id']}/get", json={"args": [False]}),
            502,
            "backend-exception",
        )
        assert body["exception"]["type"] == "Empty"

        # Release: back to where the manager was.
        for held in (ident, child["id"], queue["id"]):
            response = await c.delete(f"/backends/m/objects/{held}")
            assert response.status_code == 204, response.text
        assert_problem(await c.get(base), 404, "unknown-object")
        assert_problem(await c.delete(base), 404, "unknown-object")
        assert objects_on(base_manager) == before
        # The manager is alive and well after all of it.
        again = await c.post("/backends/m/objects", json={"typeid": "Counter"})
        assert again.status_code == 201
    # Shutdown gave back the last one.
    assert objects_on(base_manager) == before


async def test_sync_manager_types(sync_manager, tmp_path):
    before = objects_on(sync_manager)
    async with serve_gateway(manager_config(sync_manager, tmp_path)) as gw:
        c = gw.client

        async def create(typeid: str, **body: Any) -> str:
            response = await c.post("/backends/m/objects", json={"typeid": typeid, **body})
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        async def call(ident: str, method: str, *args: Any) -> Any:
            response = await c.post(
                f"/backends/m/objects/{ident}/{method}", json={"args": list(args)}
            )
            assert response.status_code == 200, response.text
            return response.json()["result"]

        d = await create("dict")
        await call(d, "__setitem__", "a", [1, 2])
        await call(d, "update", {"b": 3})
        assert await call(d, "__getitem__", "a") == [1, 2]
        assert await call(d, "copy") == {"a": [1, 2], "b": 3}
        assert await call(d, "__len__") == 2
        lst = await create("list", args=[[1, 2]])
        await call(lst, "append", 3)
        assert await call(lst, "__getitem__", -1) == 3
        assert await call(lst, "__len__") == 3
        q = await create("Queue")
        await call(q, "put", {"job": 1})
        assert await call(q, "qsize") == 1
        assert await call(q, "get") == {"job": 1}
        body = assert_problem(
            await c.post(f"/backends/m/objects/{q}/get_nowait"), 502, "backend-exception"
        )
        assert body["exception"]["type"] == "Empty"
        ns = await create("Namespace", kwargs={"x": 1})
        await call(ns, "__setattr__", "y", "two")
        assert await call(ns, "__getattribute__", "x") == 1
        assert await call(ns, "__getattribute__", "y") == "two"
        assert objects_on(sync_manager) == before + 4
        for ident in (d, lst, q):
            assert (await c.delete(f"/backends/m/objects/{ident}")).status_code == 204
        assert objects_on(sync_manager) == before + 1
    assert objects_on(sync_manager) == before


async def test_methods_are_narrowed(manager, tmp_path):
    settings = manager_config(
        manager, tmp_path, typeids=["get_queue"], methods={"get_queue": ["put", "qsize"]}
    )
    async with serve_gateway(settings) as gw:
        c = gw.client
        queue = (await c.post("/backends/m/objects", json={"typeid": "get_queue"})).json()
        assert queue["methods"] == ["put", "qsize"]
        (listed,) = (await c.get("/backends")).json()["backends"]
        assert listed["kind"] == "manager" and listed["typeids"] == ["get_queue"]
        assert listed["methods"] == {"get_queue": ["put", "qsize"]} and listed["objects"] == 1
        base = f"/backends/m/objects/{queue['id']}"
        assert (await c.post(f"{base}/put", json={"args": [1]})).status_code == 200
        assert_problem(await c.post(f"{base}/get"), 404, "unknown-method")
        assert (await c.post(f"{base}/qsize")).json()["result"] == 1


async def test_queue_both_ways_across_languages(manager, tmp_path):
    settings = manager_config(manager, tmp_path, typeids=["get_queue", "get_results"])
    async with serve_gateway(settings) as gw:
        c = gw.client
        jobs = (await c.post("/backends/m/objects", json={"typeid": "get_queue"})).json()["id"]
        results = (await c.post("/backends/m/objects", json={"typeid": "get_results"})).json()["id"]
        for item in ({"job": 1}, "two", [3]):
            response = await c.post(f"/backends/m/objects/{jobs}/put", json={"args": [item]})
            assert response.status_code == 200, response.text

        def python_side() -> list[Any]:
            m = native(manager)
            queue, out = m.get_queue(), m.get_results()  # type: ignore[attr-defined]
            got = [queue.get(timeout=10) for _ in range(3)]
            for item in got:
                out.put(("done", item))
            return got

        assert await asyncio.to_thread(python_side) == [{"job": 1}, "two", [3]]
        read = []
        for _ in range(3):
            response = await c.post(f"/backends/m/objects/{results}/get", json={"args": [True, 10]})
            read.append(response.json()["result"])
        assert read == [["done", {"job": 1}], ["done", "two"], ["done", [3]]]


async def test_many_concurrent_calls_and_creates(manager, tmp_path):
    before = objects_on(manager)
    settings = manager_config(manager, tmp_path, typeids=["Counter"], max_waiters=2000)
    async with (
        serve_gateway(settings) as gw,
        # As many HTTP connections as calls, so all of them reach the gateway at once.
        httpx.AsyncClient(
            base_url=gw.url, timeout=60, limits=httpx.Limits(max_connections=None)
        ) as c,
    ):
        ident = (await c.post("/backends/m/objects", json={"typeid": "Counter"})).json()["id"]

        async def echo(i: int) -> Any:
            response = await c.post(f"/backends/m/objects/{ident}/echo", json={"args": [i]})
            assert response.status_code == 200, response.text
            return response.json()["result"]

        assert await asyncio.gather(*(echo(i) for i in range(1000))) == list(range(1000))

        async def create(i: int) -> str:
            response = await c.post("/backends/m/objects", json={"typeid": "Counter", "args": [i]})
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        made = await asyncio.gather(*(create(i) for i in range(200)))
        assert len(set(made)) == 200
        assert objects_on(manager) == before + 201
        values = await asyncio.gather(
            *(c.post(f"/backends/m/objects/{made_id}/value") for made_id in made)
        )
        assert [v.json()["result"] for v in values] == list(range(200))
        deleted = await asyncio.gather(*(c.delete(f"/backends/m/objects/{m}") for m in made))
        assert {d.status_code for d in deleted} == {204}
        assert objects_on(manager) == before + 1
        client = gw.state.backends["m"].manager
        assert client is not None
        calls, requests = client.methods.stats(), client.requests.stats()
        assert calls["errors"] == {} and requests["errors"] == {}, (calls, requests)
        # Method calls share a few switched connections; server-level requests
        # (1 + 200 creates, 200 decrefs) each had one of their own.
        assert calls["opened"] <= calls["max_connections_per_address"] + 1
        assert calls["calls"] >= 1200
        assert requests["opened"] >= 401
    assert objects_on(manager) == before


async def test_unused_objects_expire(manager, tmp_path):
    before = objects_on(manager)
    settings = manager_config(manager, tmp_path, typeids=["Counter"], object_ttl=0.3)
    async with serve_gateway(settings) as gw:
        c = gw.client
        ident = (await c.post("/backends/m/objects", json={"typeid": "Counter"})).json()["id"]
        assert objects_on(manager) == before + 1
        deadline = time.monotonic() + 10
        while (await c.get(f"/backends/m/objects/{ident}")).status_code == 200:
            assert time.monotonic() < deadline, "the object never expired"
            await asyncio.sleep(0.05)
        assert_problem(await c.post(f"/backends/m/objects/{ident}/value"), 404, "unknown-object")
        deadline = time.monotonic() + 10
        while objects_on(manager) != before:
            assert time.monotonic() < deadline, "the reference was not given back"
            await asyncio.sleep(0.05)


async def test_shared_typeid_is_held_once_per_create(manager, tmp_path):
    before = objects_on(manager)
    async with serve_gateway(manager_config(manager, tmp_path)) as gw:
        c = gw.client
        first = (await c.post("/backends/m/objects", json={"typeid": "get_queue"})).json()
        second = (await c.post("/backends/m/objects", json={"typeid": "get_queue"})).json()
        assert first["id"] == second["id"]  # one shared queue
        assert (await c.delete(f"/backends/m/objects/{first['id']}")).status_code == 204
        # The second create's reference still holds it.
        assert (await c.post(f"/backends/m/objects/{first['id']}/qsize")).status_code == 200
        assert objects_on(manager) == before + 1
        assert (await c.delete(f"/backends/m/objects/{first['id']}")).status_code == 204
        assert objects_on(manager) == before


async def test_server_functions_are_unreachable(manager, tmp_path):
    settings = manager_config(manager, tmp_path)
    async with serve_gateway(settings) as gw:
        c = gw.client
        ident = (await c.post("/backends/m/objects", json={"typeid": "Counter"})).json()["id"]
        tuple_payload = {"$tuple": [None, "shutdown", {"$tuple": []}, {}]}
        for name in ("shutdown", "accept_connection", "create", "decref", "dummy", "debug_info"):
            assert_problem(
                await c.post(f"/backends/m/objects/{ident}/{name}"), 404, "unknown-method"
            )
            # As a typeid, it is only a name for create: the manager knows none such.
            assert_problem(
                await c.post("/backends/m/objects", json={"typeid": name}), 502, "manager-failure"
            )
        body = assert_problem(
            await c.post("/compute", json={"backend": "m", "payload": tuple_payload}),
            422,
            "wrong-backend-kind",
        )
        assert "/backends/m/objects" in body["detail"]
        assert_problem(
            await c.post("/backends/m/compute", json={"payload": tuple_payload}),
            422,
            "wrong-backend-kind",
        )
        batch = await c.post(
            "/compute/batch", json={"requests": [{"backend": "m", "payload": tuple_payload}]}
        )
        entry = batch.json()["results"][0]["error"]
        assert entry["type"] == problem_type("wrong-backend-kind")
        async with open_ws(gw) as ws:
            await ws.send(
                '{"id": 1, "backend": "m", "payload": '
                '{"$tuple": [null, "shutdown", {"$tuple": []}, {}]}}'
            )
            reply = await recv_json(ws)
            assert reply["id"] == 1 and reply["error"]["type"] == problem_type("wrong-backend-kind")
            await ws.send(f'{{"id": 2, "backend": "m", "object": "{ident}", "method": "shutdown"}}')
            reply = await recv_json(ws)
            assert reply["error"]["type"] == problem_type("unknown-method")
        async with open_ws(gw, "/ws/session/m") as ws:
            closed = await until_closed(ws)
            assert closed.code == 1008 and closed.reason.startswith("wrong-backend-kind")
        # Still serving: nothing reached the server's own functions.
        assert (await c.post(f"/backends/m/objects/{ident}/value")).json()["result"] == 0
        assert objects_on(manager) >= 1


async def test_object_calls_on_ws(manager, tmp_path):
    async with serve_gateway(manager_config(manager, tmp_path)) as gw:
        c = gw.client
        ident = (await c.post("/backends/m/objects", json={"typeid": "Counter"})).json()["id"]
        async with open_ws(gw) as ws:
            for i in range(20):
                await ws.send(
                    f'{{"id": {i}, "object": "{ident}", "method": "echo", "args": [{i}]}}'
                )
            replies = [await recv_json(ws) for _ in range(20)]
            assert sorted((r["id"], r["result"]) for r in replies) == [(i, i) for i in range(20)]
            await ws.send(f'{{"id": "c", "object": "{ident}", "method": "child"}}')
            child = (await recv_json(ws))["result"]["$object"]
            await ws.send(f'{{"id": "v", "object": "{child["id"]}", "method": "value"}}')
            assert (await recv_json(ws)) == {"id": "v", "result": 0}
            await ws.send('{"id": "x", "object": "nope", "method": "value"}')
            assert (await recv_json(ws))["error"]["type"] == problem_type("unknown-object")
            await ws.send('{"id": "y", "object": 3, "method": "value"}')
            assert (await recv_json(ws))["error"]["type"] == problem_type("invalid-request")


async def test_object_routes_refuse_listener_backends(start_backend, tmp_path):
    listener = start_backend("listener", mode="threaded")
    settings = {"backends": {"adder": backend_config(listener, tmp_path)}}
    async with serve_gateway(settings) as gw:
        c = gw.client
        assert_problem(
            await c.post("/backends/adder/objects", json={"typeid": "x"}), 422, "wrong-backend-kind"
        )
        assert_problem(await c.get("/backends/adder/objects/1"), 422, "wrong-backend-kind")
        assert_problem(
            await c.post("/backends/nope/objects", json={"typeid": "x"}), 404, "unknown-backend"
        )


async def test_openapi_documents_manager_routes(manager, tmp_path):
    settings = manager_config(
        manager, tmp_path, typeids=["get_queue"], methods={"get_queue": ["put", "get"]}
    )
    async with serve_gateway(settings) as gw:
        document = (await gw.client.get("/openapi.json")).json()
    paths = document["paths"]
    assert "post" in paths["/backends/m/objects"]
    assert {"get", "delete"} <= set(paths["/backends/m/objects/{ident}"])
    call = paths["/backends/m/objects/{ident}/{method}"]["post"]
    assert "`put`" in call["description"] and "`get_queue`" in call["description"]
    create = document["components"]["schemas"]["ObjectCreate.m"]
    assert create["properties"]["typeid"]["enum"] == ["get_queue"]
    assert "/backends/m/compute" not in paths


async def test_nested_proxies_are_held_and_addressable(manager, tmp_path):
    m = native(manager)
    Native.register("get_store")
    store = m.get_store()  # type: ignore[attr-defined]
    store.put("q", m.get_queue())  # type: ignore[attr-defined]  # a proxy inside a value
    m.get_queue().put("from python")  # type: ignore[attr-defined]
    before = objects_on(manager)
    async with serve_gateway(manager_config(manager, tmp_path)) as gw:
        c = gw.client
        ident = (await c.post("/backends/m/objects", json={"typeid": "get_store"})).json()["id"]
        answer = await c.post(f"/backends/m/objects/{ident}/get", json={"args": ["q"]})
        assert answer.status_code == 200, answer.text
        nested = answer.json()["result"]["$object"]
        assert "get" in nested["methods"] and "put" in nested["methods"]
        got = await c.post(f"/backends/m/objects/{nested['id']}/get", json={"args": [False]})
        assert got.json()["result"] == "from python"
        assert (await c.delete(f"/backends/m/objects/{nested['id']}")).status_code == 204
        assert (await c.delete(f"/backends/m/objects/{ident}")).status_code == 204
        assert objects_on(manager) == before


async def test_hostile_tokens_connect_nowhere(start_backend, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    host, port = silent.getsockname()
    hostile = start_backend(HOSTILE_MANAGER, args=["--silent", f"{host}:{port}"])
    try:
        async with (
            serve_gateway(manager_config(hostile, tmp_path)) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as prober_client,
        ):
            c = gw.client
            latencies: list[float] = []
            done = asyncio.Event()
            # The probe's own connection is open before the measurement starts.
            assert (await prober_client.get("/healthz")).status_code == 200

            async def probe() -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    response = await prober_client.get("/healthz")
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    await asyncio.sleep(0.002)

            prober = asyncio.create_task(probe())
            bait = (await c.post("/backends/m/objects", json={"typeid": "x"})).json()["id"]
            for _ in range(5):
                proxy = (await c.post(f"/backends/m/objects/{bait}/token")).json()["result"]
                assert proxy["$object"]["id"] == "evil1"
                # Served by the configured manager, not by the token's address.
                value = await c.post("/backends/m/objects/evil1/value")
                assert value.json()["result"] == 1
                rebuilt = (await c.post(f"/backends/m/objects/{bait}/rebuild")).json()["result"]
                assert rebuilt[0]["$object"]["id"] == "evil2"
                typed = await c.post(f"/backends/m/objects/{bait}/rebuild_typed")
                assert typed.json()["result"]["inner"]["$object"]["id"] == "evil3"
            done.set()
            await prober
            assert len(latencies) >= 5
            assert max(latencies) < 0.05, [
                (i, round(t, 3)) for i, t in enumerate(latencies) if t > 0.02
            ]
        readable, _, _ = select.select([silent], [], [], 0)
        assert not readable, "something connected to the address inside a token"

        # The control: the stdlib, unpickling the same reply, connects at once.
        with stdlib_connect(hostile.address, hostile.authkey) as conn:
            conn.send((None, "accept_connection", ("test",), {}))
            assert conn.recv() == ("#RETURN", None)
            conn.send(("bait", "rebuild", (), {}))
            data = conn.conn.recv_bytes()
        thread = threading.Thread(target=_unpickle_quietly, args=(data,), daemon=True)
        thread.start()
        readable, _, _ = select.select([silent], [], [], 10)
        assert readable, "the control experiment did not connect: the test proves nothing"
    finally:
        silent.close()  # the control's stuck handshake ends with a reset
    thread.join(10)


def _unpickle_quietly(data: bytes) -> None:
    with contextlib.suppress(Exception):
        pickle.loads(data)
