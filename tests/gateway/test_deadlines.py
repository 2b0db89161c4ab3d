"""The ``Request-Timeout`` header (gateway/deadlines.py) on every route that calls a backend.

Real app on a real port, a real threaded demo backend (its ``sleep`` op holds
a call as long as asked) and a real ``multiprocessing.managers`` server for
the object routes. Each timing assertion has a floor (the deadline asked
for: nothing cut the call shorter) and a generous ceiling well under the
backend's own sleep (the header did cut it), never a sleep in the test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from gateway_support import backend_config, problem_type, serve_gateway
from ws_support import open_ws, recv_json, until_closed

from gateway.deadlines import MAX_HEADER_CHARS, REQUEST_TIMEOUT, header_timeout
from gateway.openapi_file import example_settings
from gateway.problems import PROBLEM_TYPES, InvalidRequestTimeout, problem_for
from tests.conftest import SERVERS

pytestmark = pytest.mark.timeout(60)

MANAGER = str(SERVERS / "manager.py")
TIMED_OUT = problem_type("backend-timeout")
INVALID = problem_type("invalid-request-timeout")
#: How long a held call would take: far past every deadline asked for here.
LONG = 5.0
#: Ceiling of a call cut at 0.3 s: well under LONG, generous for a loaded machine.
CEILING = 3.0
SLEEP = {"op": "sleep", "seconds": LONG}
#: Every value the header refuses, and why.
BAD_VALUES = {
    "letters": "abc",
    "negative": "-1",
    "zero": "0",
    "zero with a fraction": "0.000",
    "nan": "nan",
    "inf": "inf",
    "Infinity": "Infinity",
    "empty": "",
    "huge number of digits": "9" * 5000,
    "just over the length": "1" * (MAX_HEADER_CHARS + 1),
    "overflows to infinity": "1e999",
    "underflows to zero": "1e-999",
    "a list": "1, 2",
    "a sign": "+1",
    "hex": "0x10",
    "underscores": "1_000",
    "a unit": "5s",
    "a bare point": ".5",
}


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def settings(demo: Any, tmp_path: Path, call_timeout: float = 30.0) -> dict[str, Any]:
    return {
        # The held calls are abandoned: do not wait for them at shutdown.
        "gateway": {"default_backend": "demo", "shutdown_grace": 0.5},
        "backends": {"demo": backend_config(demo, tmp_path, call_timeout=call_timeout)},
    }


def deadline(seconds: float | str) -> dict[str, str]:
    return {REQUEST_TIMEOUT: str(seconds)}


async def timed(
    client: httpx.AsyncClient, method: str, path: str, **options: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.request(method, path, **options)
    return response, time.monotonic() - started


def assert_timed_out(response: httpx.Response, elapsed: float, seconds: float) -> dict[str, Any]:
    """The 504 of a call cut at ``seconds``: not sooner, and well before the backend answered."""
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == TIMED_OUT
    # The existing message gives the seconds the call had: the deadline that fired.
    assert f"within {seconds} s" in body["detail"], body["detail"]
    assert seconds <= elapsed < CEILING, elapsed
    return body


def assert_invalid(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == INVALID
    assert REQUEST_TIMEOUT in body["detail"]
    assert body["errors"] == [
        {"detail": body["errors"][0]["detail"], "parameter": REQUEST_TIMEOUT, "in": "header"}
    ]
    assert "Traceback" not in response.text
    return body


# -- the rule -------------------------------------------------------------------------------


async def test_the_header_shortens_a_call(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        response, elapsed = await timed(
            gw.client, "POST", "/compute", json={"payload": SLEEP}, headers=deadline(0.3)
        )
        assert_timed_out(response, elapsed, 0.3)
        # The per-backend route takes it as well.
        response, elapsed = await timed(
            gw.client,
            "POST",
            "/backends/demo/compute",
            json={"payload": SLEEP},
            headers=deadline(0.3),
        )
        assert_timed_out(response, elapsed, 0.3)
        # Exponent notation, as clients format small numbers (str(0.3e0)).
        response, elapsed = await timed(
            gw.client, "POST", "/compute", json={"payload": SLEEP}, headers=deadline("3e-1")
        )
        assert_timed_out(response, elapsed, 0.3)
        # A call that fits in the deadline is answered.
        response = await gw.client.post("/compute", json={"payload": [5, 6]}, headers=deadline(0.3))
        assert response.status_code == 200 and response.json()["result"] == 11


async def test_the_header_never_lengthens_a_call(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path, call_timeout=0.3)) as gw:
        response, elapsed = await timed(
            gw.client, "POST", "/compute", json={"payload": SLEEP}, headers=deadline(10)
        )
        # Allowed, and changes nothing: the backend's 0.3 s holds.
        assert_timed_out(response, elapsed, 0.3)
        # A value far over every limit is no error either.
        response = await gw.client.post(
            "/compute", json={"payload": [1, 2]}, headers=deadline("1e300")
        )
        assert response.status_code == 200 and response.json()["result"] == 3


async def test_header_and_body_combine_as_the_smaller(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        # The header is the smaller.
        response, elapsed = await timed(
            gw.client,
            "POST",
            "/compute",
            json={"payload": SLEEP, "timeout": 10},
            headers=deadline(0.3),
        )
        assert_timed_out(response, elapsed, 0.3)
        # The body is the smaller.
        response, elapsed = await timed(
            gw.client,
            "POST",
            "/compute",
            json={"payload": SLEEP, "timeout": 0.3},
            headers=deadline(10),
        )
        assert_timed_out(response, elapsed, 0.3)


# -- bad values -------------------------------------------------------------------------------


#: What no HTTP client lets one send, which the server may still be given.
UNSENDABLE = {"blank": "   ", "a tab": "\t"}


@pytest.mark.parametrize(
    "value", [*BAD_VALUES.values(), *UNSENDABLE.values()], ids=[*BAD_VALUES, *UNSENDABLE]
)
def test_header_timeout_refuses(value):
    scope = {"headers": [(b"request-timeout", value.encode("latin-1"))]}
    with pytest.raises(InvalidRequestTimeout):
        header_timeout(scope)


def test_header_timeout_reads_numbers():
    def read(*values: bytes) -> float | None:
        return header_timeout({"headers": [(b"request-timeout", v) for v in values]})

    assert read() is None
    assert read(b"2.5") == 2.5
    assert read(b"30") == 30.0
    assert read(b"1e-3") == 0.001
    assert read(b" 0.25\t") == 0.25  # optional whitespace around a field value
    assert read(b"2.2250738585072014e-308") > 0  # the longest shortest-float text


async def test_every_bad_value_is_a_422_problem(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        for name, value in BAD_VALUES.items():
            response = await gw.client.post(
                "/compute", json={"payload": [1, 2]}, headers=deadline(value)
            )
            body = assert_invalid(response)
            assert len(body["detail"]) < 200, name  # a huge value is not echoed back
        # Two headers: refused, whatever they say.
        response = await gw.client.post(
            "/compute",
            json={"payload": [1, 2]},
            headers=[(REQUEST_TIMEOUT, "1"), (REQUEST_TIMEOUT, "2")],
        )
        body = assert_invalid(response)
        assert "more than once" in body["detail"]
        # Any spelling of the name is the header.
        assert_invalid(
            await gw.client.post("/compute", json={"payload": 1}, headers={"request-timeout": "0"})
        )


async def test_bad_values_on_each_route(demo, tmp_path):
    bad = deadline("abc")
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        c = gw.client
        assert_invalid(await c.post("/backends/demo/compute", json={"payload": 1}, headers=bad))
        assert_invalid(
            await c.post("/compute/batch", json={"requests": [{"payload": [1, 2]}]}, headers=bad)
        )
        assert_invalid(await c.post("/stream", json={"payload": [1, 2]}, headers=bad))
        assert_invalid(await c.post("/backends/demo/stream", json={"payload": 1}, headers=bad))
        assert_invalid(
            await c.get("/backends/demo/stream", params={"payload": "[1, 2]"}, headers=bad)
        )


# -- batch and stream -------------------------------------------------------------------------


async def test_the_header_caps_every_batch_entry(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        requests = [
            {"payload": SLEEP},
            {"payload": [5, 6]},
            {"payload": SLEEP, "timeout": 10},  # the header is smaller
            {"payload": SLEEP, "timeout": 0.3},
        ]
        response, elapsed = await timed(
            gw.client,
            "POST",
            "/compute/batch",
            json={"requests": requests},
            headers=deadline(0.3),
        )
        assert response.status_code == 200
        assert 0.3 <= elapsed < CEILING
        results = response.json()["results"]
        assert results[1]["result"] == 11
        for index in (0, 2, 3):
            error = results[index]["error"]
            assert error["type"] == TIMED_OUT and error["status"] == 504
            assert "within 0.3 s" in error["detail"]
            assert error["pointer"] == f"#/requests/{index}"


async def test_the_header_bounds_a_stream_before_its_first_reply(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        for method, path, options in (
            ("POST", "/stream", {"json": {"payload": SLEEP}}),
            ("POST", "/backends/demo/stream", {"json": {"payload": SLEEP}}),
            ("GET", "/backends/demo/stream", {"params": {"payload": json.dumps(SLEEP)}}),
        ):
            response, elapsed = await timed(
                gw.client, method, path, headers=deadline(0.3), **options
            )
            assert response.status_code == 504, (method, path, response.text)
            assert response.json()["type"] == TIMED_OUT
            assert 0.3 <= elapsed < CEILING


async def test_the_header_bounds_the_whole_stream(demo, tmp_path):
    # 50 replies 0.1 s apart: 4.9 s in all, each gap far under the idle timeout.
    payload = {"op": "stream", "count": 50, "delay": 0.1, "value": "x"}
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        started = time.monotonic()
        async with gw.client.stream(
            "POST", "/stream", json={"payload": payload, "timeout": 10}, headers=deadline(0.5)
        ) as response:
            assert response.status_code == 200
            items = [orjson.loads(line) async for line in response.aiter_lines() if line]
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < CEILING
    *results, last = items
    assert 1 <= len(results) < 50 and all("result" in item for item in results)
    assert last["error"]["type"] == TIMED_OUT


# -- /ws ------------------------------------------------------------------------------------------


async def test_the_upgrade_header_bounds_each_call_on_the_socket(demo, tmp_path):
    async with (
        serve_gateway(settings(demo, tmp_path)) as gw,
        open_ws(gw, headers=deadline(0.3)) as ws,
    ):
        for ident, call in (
            (1, {"payload": SLEEP}),
            (2, {"payload": SLEEP, "timeout": 10}),  # the header is smaller
        ):
            started = time.monotonic()
            await ws.send(orjson.dumps({"id": ident, **call}).decode())
            reply = await recv_json(ws)
            elapsed = time.monotonic() - started
            assert reply["id"] == ident
            assert reply["error"]["type"] == TIMED_OUT
            assert "within 0.3 s" in reply["error"]["detail"]
            assert 0.3 <= elapsed < CEILING
        # A per-call deadline, not the socket's life: well past 0.3 s, the
        # socket still makes calls, and one that fits in 0.3 s is answered.
        await ws.send('{"id": 3, "payload": {"op": "sleep", "seconds": 0.05, "value": 7}}')
        assert await recv_json(ws) == {"id": 3, "result": 7}


async def test_a_bad_upgrade_header_closes_the_socket(demo, tmp_path):
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        for value in ("abc", "0", "inf", ""):
            async with open_ws(gw, headers=deadline(value)) as ws:
                closed = await until_closed(ws)
            assert closed.code == 1008
            assert closed.reason.startswith("invalid-request-timeout: "), closed.reason


async def test_a_session_ignores_the_header(demo, tmp_path):
    # A session's messages are not calls: there is nothing for a deadline to bound.
    async with (
        serve_gateway(settings(demo, tmp_path)) as gw,
        open_ws(gw, "/ws/session/demo", headers=deadline(0.1)) as ws,
    ):
        await ws.send('{"op": "sleep", "seconds": 0.3, "value": "late"}')
        assert await recv_json(ws) == "late"


# -- manager objects ----------------------------------------------------------------------------


@pytest.fixture
def manager(start_backend):
    return start_backend(MANAGER)


def manager_settings(backend: Any, tmp_path: Path) -> dict[str, Any]:
    config = backend_config(backend, tmp_path, kind="manager", typeids=["*"], call_timeout=30.0)
    return {"gateway": {"shutdown_grace": 0.5}, "backends": {"m": config}}


async def test_the_header_on_object_routes(manager, tmp_path):
    async with serve_gateway(manager_settings(manager, tmp_path)) as gw:
        c = gw.client
        base = "/backends/m/objects"
        # get_results is a queue nobody puts into: a blocking get holds the call.
        response = await c.post(base, json={"typeid": "get_results"}, headers=deadline(10))
        assert response.status_code == 201, response.text
        queue = response.json()["id"]
        hold = {"args": [True, LONG]}
        response, elapsed = await timed(
            c, "POST", f"{base}/{queue}/get", json=hold, headers=deadline(0.3)
        )
        assert_timed_out(response, elapsed, 0.3)
        response, elapsed = await timed(
            c, "POST", f"{base}/{queue}/get", json={**hold, "timeout": 10}, headers=deadline(0.3)
        )
        assert_timed_out(response, elapsed, 0.3)
        # The same call on /ws, bounded by the upgrade's header.
        async with open_ws(gw, headers=deadline(0.3)) as ws:
            call = {"id": 1, "backend": "m", "object": queue, "method": "get", **hold}
            started = time.monotonic()
            await ws.send(orjson.dumps(call).decode())
            reply = await recv_json(ws)
            assert reply["error"]["type"] == TIMED_OUT
            assert 0.3 <= time.monotonic() - started < CEILING
        # Release: each server-level request has a connection of its own, so a
        # deadline too short to open one fails in the wait for it, the same
        # answer as a body timeout that short gets on create.
        response = await c.post(base, json={"typeid": "Counter"})
        assert response.status_code == 201
        counter = response.json()["id"]
        tiny = deadline("1e-6")
        released = await c.delete(f"{base}/{counter}", headers=tiny)
        created = await c.post(base, json={"typeid": "Counter", "timeout": 1e-6})
        for response in (released, created):
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["type"] == problem_type("pool-exhausted")
            assert "within 1e-06 s" in body["detail"]
        assert (await c.get(f"{base}/{counter}")).status_code == 200  # still held
        assert (await c.delete(f"{base}/{counter}", headers=deadline(10))).status_code == 204
        # Create: a constructor that takes LONG seconds is cut at the header's
        # (last: the manager makes objects one at a time, so it stays busy).
        slow = {"typeid": "SlowCounter", "args": [LONG]}
        response, elapsed = await timed(c, "POST", base, json=slow, headers=deadline(0.3))
        assert_timed_out(response, elapsed, 0.3)
        # Bad values, on each object route that calls the manager.
        bad = deadline("-1")
        assert_invalid(await c.post(base, json={"typeid": "Counter"}, headers=bad))
        assert_invalid(await c.post(f"{base}/{queue}/qsize", headers=bad))
        assert_invalid(await c.delete(f"{base}/{queue}", headers=bad))
        assert (await c.get(f"{base}/{queue}")).status_code == 200  # nothing was released


# -- the document -------------------------------------------------------------------------------

#: The operations of the example document that call a backend.
CALL_OPERATIONS = {
    ("post", "/compute"),
    ("post", "/backends/adder/compute"),
    ("post", "/compute/batch"),
    ("post", "/stream"),
    ("post", "/backends/{name}/stream"),
    ("get", "/backends/{name}/stream"),
    ("post", "/backends/jobs/objects"),
    ("delete", "/backends/jobs/objects/{ident}"),
    ("post", "/backends/jobs/objects/{ident}/{method}"),
}


async def test_the_header_is_documented_on_each_call_operation():
    async with serve_gateway(example_settings()) as gw:
        document = (await gw.client.get("/openapi.json")).json()
    seen = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            headers = [
                p
                for p in operation.get("parameters", [])
                if p["in"] == "header" and p["name"] == REQUEST_TIMEOUT
            ]
            if (method, path) in CALL_OPERATIONS:
                assert len(headers) == 1, (method, path)
                (parameter,) = headers
                assert parameter["required"] is False
                assert parameter["schema"] == {"type": "number", "exclusiveMinimum": 0}
                assert "invalid-request-timeout" in parameter["description"]
                assert 422 in map(int, operation["responses"])
                seen.add((method, path))
            else:
                assert not headers, (method, path)  # no backend call: nothing to bound
    assert seen == CALL_OPERATIONS


def test_the_problem_type_is_in_the_table():
    row = problem_for(InvalidRequestTimeout("x", []))
    assert (row.slug, row.status) == ("invalid-request-timeout", 422)
    assert PROBLEM_TYPES[InvalidRequestTimeout] is row
