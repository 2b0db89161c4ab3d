"""Every row of the error table, over HTTP, against real (and hostile) backends."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from gateway_support import (
    HOSTILE,
    PROBLEM,
    backend_config,
    problem_type,
    serve_gateway,
    wait_until,
)

from connbridge.errors import (
    AcquireTimeout,
    BackendBusy,
    CallInterrupted,
    FrameTooLarge,
    RefusedGlobal,
)
from gateway.problems import (
    PROBLEM_BASE,
    PROBLEM_TYPES,
    BackendRaised,
    InvalidPayload,
    problem_for,
)

pytestmark = pytest.mark.timeout(60)

LIMIT = 512


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


@pytest.fixture(scope="module")
def hostile(start_shared_backend):
    return start_shared_backend(HOSTILE)


@pytest.fixture
def settings(demo, hostile, tmp_path):
    return {
        "gateway": {"default_backend": "demo", "max_body_bytes": LIMIT},
        "backends": {
            "demo": backend_config(demo, tmp_path, max_connections=2),
            "hostile": backend_config(hostile, tmp_path, max_frame=1024 * 1024),
        },
    }


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == problem_type(slug)
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


# -- the table itself ---------------------------------------------------------------


def test_table_is_consistent():
    seen: dict[str, int] = {}
    for row in PROBLEM_TYPES.values():
        assert row.uri == PROBLEM_BASE + row.slug
        assert 400 <= row.status <= 599
        assert seen.setdefault(row.slug, row.status) == row.status
    assert problem_for(AcquireTimeout("x")).slug == "pool-exhausted"
    assert problem_for(BackendBusy("x")).slug == "backend-busy"
    assert problem_for(CallInterrupted("x")).slug == "backend-connection-lost"
    assert problem_for(FrameTooLarge(10, 1)).slug == "backend-protocol-error"
    assert problem_for(RefusedGlobal("os", "system")).slug == "refused-pickle"
    assert problem_for(InvalidPayload("x", [])).status == 422
    assert problem_for(BackendRaised(ValueError(1))).status == 502
    assert problem_for(KeyError("x")).slug == "internal-error"


# -- 4xx ------------------------------------------------------------------------------


async def test_400_malformed_json(settings):
    async with serve_gateway(settings) as gw:
        for content in (b'{"payload": [1, 2', b"\xff\xfe{}", b"", b"NaN", b'{"payload": 1e999}'):
            response = await gw.client.post(
                "/compute", content=content, headers={"content-type": "application/json"}
            )
            assert_problem(response, 400, "malformed-json")


async def test_404_unknown_backend_and_path(settings):
    async with serve_gateway(settings) as gw:
        body = assert_problem(
            await gw.client.post("/compute", json={"backend": "ghost", "payload": 1}),
            404,
            "unknown-backend",
        )
        assert "ghost" in body["detail"]
        assert_problem(
            await gw.client.post("/backends/ghost/compute", json={"payload": 1}),
            404,
            "unknown-backend",
        )
        assert_problem(await gw.client.get("/no/such/path"), 404, "not-found")


async def test_405_method_not_allowed(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.get("/compute")
        assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == "POST"
        assert_problem(await gw.client.put("/healthz"), 405, "method-not-allowed")


async def test_413_by_content_length_without_reading(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/compute", json={"payload": "x" * LIMIT})
        body = assert_problem(response, 413, "body-too-large")
        assert body["limit"] == LIMIT
        # Announced but never sent: the answer cannot have waited for the body.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(
                b"POST /compute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000000\r\n\r\n"
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413 ")
            assert b"connection: close" in head.lower()
        finally:
            writer.close()
            await writer.wait_closed()


async def test_413_while_streaming_and_the_rest_is_not_read(settings):
    async with serve_gateway(settings) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(
                b"POST /compute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"[" * (LIMIT // 2 + 1)
            for _ in range(2):  # just over the limit; the body never ends
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413 ")
            rest = await asyncio.wait_for(reader.read(), 10)  # then the server hangs up
            assert json.loads(rest)["type"] == problem_type("body-too-large")
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonp",
    ],
)
async def test_415_not_json(settings, content_type):
    # Each body parses as JSON: only the declared type decides.
    headers = {} if content_type is None else {"content-type": content_type}
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/compute", content=b'{"payload": [1, 2]}', headers=headers)
        assert_problem(response, 415, "unsupported-media-type")


async def test_json_media_types_accepted(settings):
    async with serve_gateway(settings) as gw:
        for content_type in (
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.example+json",
        ):
            response = await gw.client.post(
                "/compute", content=b'{"payload": [1, 2]}', headers={"content-type": content_type}
            )
            assert response.status_code == 200, content_type


@pytest.mark.parametrize(
    ("body", "pointers"),
    [
        ([1, 2], ["#"]),
        ({}, ["#/payload"]),
        ({"payload": 1, "payloads": 2}, ["#/payloads"]),
        ({"payload": 1, "timeout": 0}, ["#/timeout"]),
        ({"payload": 1, "timeout": "1"}, ["#/timeout"]),
        ({"payload": 1, "timeout": True}, ["#/timeout"]),
        ({"payload": 1, "result_format": "xml"}, ["#/result_format"]),
        ({"payload": 1, "backend": 3}, ["#/backend"]),
        ({"backend": 3, "timeout": -1}, ["#/payload", "#/backend", "#/timeout"]),
    ],
)
async def test_422_invalid_request(settings, body, pointers):
    async with serve_gateway(settings) as gw:
        problem = assert_problem(
            await gw.client.post("/compute", json=body), 422, "invalid-request"
        )
        assert [e["pointer"] for e in problem["errors"]] == pointers


async def test_422_invalid_payload(settings):
    settings["gateway"]["max_body_bytes"] = 10_000
    async with serve_gateway(settings) as gw:
        problem = assert_problem(
            await gw.client.post("/compute", json={"payload": [1, {"$nope": 2}]}),
            422,
            "invalid-payload",
        )
        assert problem["errors"][0]["pointer"] == "#/payload/1"
        assert "$nope" in problem["detail"]
        deep: object = 1
        for _ in range(300):
            deep = [deep]
        problem = assert_problem(
            await gw.client.post("/compute", json={"payload": deep}), 422, "invalid-payload"
        )
        assert "deeper" in problem["detail"]
        # Deeper than orjson parses at all: still "too deep", not "malformed".
        text = "[" * 2000 + "]" * 2000
        response = await gw.client.post(
            "/compute",
            content=f'{{"payload": {text}}}',
            headers={"content-type": "application/json"},
        )
        assert_problem(response, 422, "invalid-payload")


async def test_422_fastapi_validation_errors_are_problems(settings):
    def add_route(app: FastAPI) -> None:
        @app.get("/test/typed")
        async def typed(n: int) -> dict[str, int]:
            return {"n": n}

    async with serve_gateway(settings, setup=add_route) as gw:
        problem = assert_problem(await gw.client.get("/test/typed?n=abc"), 422, "invalid-request")
        assert problem["errors"][0]["parameter"] == "n"
        assert problem["errors"][0]["in"] == "query"


# -- 5xx ------------------------------------------------------------------------------


async def test_500_hides_the_error(settings, caplog):
    def add_route(app: FastAPI) -> None:
        @app.get("/test/boom")
        async def boom() -> None:
            raise RuntimeError("internal secret 1234")

    async with serve_gateway(settings, setup=add_route) as gw:
        response = await gw.client.get("/test/boom")
        body = assert_problem(response, 500, "internal-error")
        assert "1234" not in response.text
        assert body["detail"] == "an internal error occurred; see the gateway log"
    assert any("internal secret 1234" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_502_backend_exception(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute",
            json={"payload": {"op": "raise", "type": "ZeroDivisionError", "args": ["x", [1, 2]]}},
        )
        body = assert_problem(response, 502, "backend-exception")
        assert body["exception"] == {"type": "ZeroDivisionError", "args": ["x", [1, 2]]}
        assert body["backend"] == "demo"
        # The connection stays usable.
        response = await gw.client.post("/compute", json={"payload": [1, 1]})
        assert response.json()["result"] == 2


@pytest.mark.parametrize(
    ("op", "slug"),
    [
        ("global", "refused-pickle"),
        ("not-pickle", "refused-pickle"),
        ("huge-frame", "backend-protocol-error"),
        ("close", "backend-connection-lost"),
        ("surrogate", "unconvertible-result"),
        ("shared", "unconvertible-result"),  # past max_result_bytes, not 1 GB of JSON
    ],
)
async def test_502_bad_replies(settings, op, slug):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/backends/hostile/compute", json={"payload": {"op": op}})
        body = assert_problem(response, 502, slug)
        assert body["backend"] == "hostile"
        # The gateway recovers: the next call gets a good connection.
        response = await gw.client.post("/backends/hostile/compute", json={"payload": [2, 2]})
        assert response.json()["result"] == 4


async def test_exception_arguments_past_max_result_bytes_are_left_out(settings):
    settings["gateway"]["max_result_bytes"] = 16 * 1024 * 1024  # the default would allow them
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/backends/hostile/compute", json={"payload": {"op": "shared-exception"}}
        )
    body = assert_problem(response, 502, "backend-exception")
    assert body["exception"] == {"type": "ValueError", "args": None}
    assert len(response.content) < 10_000


async def test_503_pool_exhausted_with_retry_after_and_counts(demo, tmp_path):
    settings = {
        "backends": {"demo": backend_config(demo, tmp_path, max_connections=1, acquire_timeout=0.2)}
    }
    async with serve_gateway(settings) as gw:
        slow = asyncio.create_task(
            gw.client.post("/compute", json={"payload": {"op": "sleep", "seconds": 1.5}})
        )

        async def busy() -> bool:
            return gw.state.backends["demo"].running_pool().stats()["in_use"] == 1

        await wait_until(busy, what="the slow call holds the only connection")
        response = await gw.client.post("/compute", json={"payload": [1, 2]})
        body = assert_problem(response, 503, "pool-exhausted")
        assert response.headers["retry-after"] == "1"
        assert "1 in use, 0 draining" in body["detail"]
        assert "not sent" in body["detail"]
        assert (await slow).status_code == 200


async def test_503_unreachable(tmp_path, settings):
    settings["backends"]["gone"] = {"address": f"unix:{tmp_path}/missing.sock"}
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/backends/gone/compute", json={"payload": [1, 2]})
        body = assert_problem(response, 503, "backend-unreachable")
        assert "missing.sock" in body["detail"]


async def test_503_authentication_failed_names_no_key(start_backend, tmp_path):
    listener = start_backend("listener", mode="threaded")
    settings = {"backends": {"locked": {"address": listener.address, "authkey_env": "WRONG_KEY"}}}
    wrong = "not-the-key-Zq81"
    env = {"WRONG_KEY": wrong}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        async with serve_gateway(settings) as gw:
            response = await gw.client.post("/compute", json={"payload": [1, 2]})
            body = assert_problem(response, 503, "backend-authentication-failed")
            assert "auth" in body["detail"].lower()
            assert wrong not in response.text
            assert "connbridge-test-key" not in response.text
            backends = await gw.client.get("/backends")
            assert wrong not in backends.text
    assert listener.alive()


async def test_504_timeout(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute", json={"payload": {"op": "sleep", "seconds": 0.6}, "timeout": 0.2}
        )
        assert_problem(response, 504, "backend-timeout")


async def test_503_shutting_down(settings):
    async with serve_gateway(settings) as gw:
        await gw.state.close()
        response = await gw.client.post("/compute", json={"payload": [1, 2]})
        assert_problem(response, 503, "shutting-down")
        assert response.headers["retry-after"] == "1"
