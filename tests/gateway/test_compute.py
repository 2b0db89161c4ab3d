"""POST /compute, /backends/{name}/compute and /compute/batch against real backends."""

from __future__ import annotations

import asyncio
import time

import pytest
from gateway_support import (
    backend_config,
    problem_type,
    serve_gateway,
    two_backends_no_default,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


@pytest.fixture(scope="module")
def classic(start_shared_backend):
    return start_shared_backend("classic")


@pytest.fixture(scope="module")
def unix_listener(start_shared_backend):
    return start_shared_backend("listener", address="unix:", mode="threaded")


@pytest.fixture
def settings(demo, classic, unix_listener, tmp_path):
    return {
        "gateway": {"default_backend": "demo", "batch_concurrency": 4},
        "backends": {
            "demo": backend_config(demo, tmp_path),
            "classic": backend_config(classic, tmp_path, max_connections=1),
            "unix": backend_config(unix_listener, tmp_path),
        },
    }


async def test_default_backend_adds(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/compute", json={"payload": [5, 6]})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["result"] == 11
        assert body["backend"] == "demo"
        assert body["elapsed_ms"] >= 0
        response = await gw.client.post("/compute", json={"payload": ["mark", "帅哥"]})
        assert response.json()["result"] == "mark帅哥"


@pytest.mark.parametrize("name", ["demo", "classic", "unix"])
async def test_each_kind_of_backend(settings, name):
    async with serve_gateway(settings) as gw:
        for route, body in [
            ("/compute", {"backend": name, "payload": [2, 3]}),
            (f"/backends/{name}/compute", {"payload": [2, 3]}),
            (f"/backends/{name}/compute", {"backend": name, "payload": [2, 3]}),
        ]:
            response = await gw.client.post(route, json=body)
            assert response.status_code == 200, response.text
            assert response.json()["result"] == 5
            assert response.json()["backend"] == name


async def test_classic_server_survives_many_calls(settings, classic):
    # The classic server dies on anything but a clean exchange or EOF; one
    # connection at a time. Concurrent callers must queue on that connection.
    async with serve_gateway(settings) as gw:
        responses = await asyncio.gather(
            *(
                gw.client.post("/backends/classic/compute", json={"payload": [i, 1]})
                for i in range(20)
            )
        )
        assert [r.json()["result"] for r in responses] == [i + 1 for i in range(20)]
        readiness = [await gw.client.get("/readyz") for _ in range(5)]
        assert {r.status_code for r in readiness} == {200}
    assert classic.alive(), classic.output()


async def test_without_a_default_the_backend_must_be_named(demo, tmp_path):
    backends = {"a": backend_config(demo, tmp_path), "b": backend_config(demo, tmp_path)}
    async with serve_gateway({"backends": backends}) as gw:
        response = await gw.client.post("/compute", json={"payload": [1, 2]})
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "#/backend"
        response = await gw.client.post("/compute", json={"payload": [1, 2], "backend": "b"})
        assert response.json()["backend"] == "b"


ALL_KEY = "compute-all-key-0001"
A_ONLY_KEY = "compute-a-only-key-0002"


def two_backends(demo, tmp_path):
    return two_backends_no_default(demo, tmp_path, key=ALL_KEY, a_only_key=A_ONLY_KEY)


async def test_batch_backend_errors_point_at_the_entrys_backend_field(demo, tmp_path):
    # Changed behaviour (issue 11): these pointed at "#/backend" (no backend, no
    # default) or at the whole entry "#/requests/N" (forbidden, unknown).
    async with serve_gateway(two_backends(demo, tmp_path)) as gw:
        requests = [
            {"payload": [1, 2], "backend": "a"},
            {"payload": [1, 2]},
            {"payload": [1, 2], "backend": "b"},
            {"payload": [1, 2], "backend": "nope"},
        ]
        scoped = await gw.client.post(
            "/compute/batch",
            json={"requests": requests},
            headers={"Authorization": f"Bearer {A_ONLY_KEY}"},
        )
        wide = await gw.client.post(
            "/compute/batch",
            json={"requests": requests},
            headers={"Authorization": f"Bearer {ALL_KEY}"},
        )
    for response in (scoped, wide):
        results = response.json()["results"]
        assert results[0]["result"] == 3
        missing = results[1]["error"]
        assert missing["type"] == problem_type("invalid-request")
        assert missing["pointer"] == "#/requests/1/backend"
        assert [e["pointer"] for e in missing["errors"]] == ["#/requests/1/backend"]
    forbidden = scoped.json()["results"][2]["error"]
    assert forbidden["type"] == problem_type("forbidden")
    assert forbidden["pointer"] == "#/requests/2/backend"
    assert forbidden["errors"] == [
        {"detail": forbidden["detail"], "pointer": "#/requests/2/backend"}
    ]
    # The scope is checked first: an unknown name is forbidden to a scoped key...
    assert scoped.json()["results"][3]["error"]["type"] == problem_type("forbidden")
    assert scoped.json()["results"][3]["error"]["pointer"] == "#/requests/3/backend"
    # ...and unknown to a key for every backend.
    assert wide.json()["results"][2]["result"] == 3
    unknown = wide.json()["results"][3]["error"]
    assert unknown["type"] == problem_type("unknown-backend")
    assert unknown["pointer"] == "#/requests/3/backend"
    assert unknown["errors"] == [{"detail": unknown["detail"], "pointer": "#/requests/3/backend"}]


async def test_a_backend_named_in_the_body_is_pointed_at_only_there(demo, tmp_path):
    # POST /compute names its backend at "#/backend"; a name in the path has
    # no place in the body, so its refusal points nowhere.
    headers = {"Authorization": f"Bearer {A_ONLY_KEY}"}
    async with serve_gateway(two_backends(demo, tmp_path)) as gw:
        forbidden = await gw.client.post(
            "/compute", json={"payload": 1, "backend": "b"}, headers=headers
        )
        unknown = await gw.client.post(
            "/compute",
            json={"payload": 1, "backend": "nope"},
            headers={"Authorization": f"Bearer {ALL_KEY}"},
        )
        by_path = await gw.client.post("/backends/b/compute", json={"payload": 1}, headers=headers)
    assert forbidden.status_code == 403
    assert forbidden.json()["errors"] == [
        {"detail": forbidden.json()["detail"], "pointer": "#/backend"}
    ]
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["pointer"] == "#/backend"
    assert by_path.status_code == 403
    assert "errors" not in by_path.json()


async def test_path_and_body_backend_must_agree(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/backends/demo/compute", json={"backend": "unix", "payload": [1, 2]}
        )
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {"detail": "must match the backend in the path", "pointer": "#/backend"}
        ]


async def test_result_formats(settings):
    async with serve_gateway(settings) as gw:
        payload = {"op": "echo", "value": {"$tuple": [1, {"$bytes": "AAE="}]}}
        natural = await gw.client.post("/compute", json={"payload": payload})
        assert natural.json()["result"] == [1, {"$bytes": "AAE="}]
        tagged = await gw.client.post(
            "/compute", json={"payload": payload, "result_format": "tagged"}
        )
        assert tagged.json()["result"] == {"$tuple": [1, {"$bytes": "AAE="}]}


async def test_big_integers_stay_exact(settings):
    # orjson would read this literal as a float; the gateway must not.
    async with serve_gateway(settings) as gw:
        big = 2**70
        response = await gw.client.post(
            "/compute",
            content=f'{{"payload": [{big}, 1]}}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200
        assert response.json()["result"] == {"$int": str(big + 1)}
        # A long digit string is no integer and is left alone.
        response = await gw.client.post(
            "/compute", json={"payload": {"op": "echo", "value": "1" * 30}}
        )
        assert response.json()["result"] == "1" * 30


async def test_request_timeout_is_capped_by_the_backend(demo, tmp_path):
    settings = {
        "gateway": {"shutdown_grace": 0.5},
        "backends": {"demo": backend_config(demo, tmp_path, call_timeout=0.3)},
    }
    async with serve_gateway(settings) as gw:
        started = time.monotonic()
        response = await gw.client.post(
            "/compute", json={"payload": {"op": "sleep", "seconds": 2}, "timeout": 60}
        )
        assert response.status_code == 504
        assert response.json()["type"] == problem_type("backend-timeout")
        assert time.monotonic() - started < 1.5  # the 0.3 s cap, not the 60 s asked for
        # A shorter timeout than the backend's is honoured.
        response = await gw.client.post(
            "/compute", json={"payload": {"op": "sleep", "seconds": 0.05}, "timeout": 0.25}
        )
        assert response.status_code == 200


async def test_batch_answers_in_order_with_errors_in_place(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute/batch",
            json={
                "requests": [
                    {"payload": {"op": "tag", "tag": "slow", "delay": 0.2}},
                    {"payload": [1, 2], "backend": "unix"},
                    {"payload": {"op": "raise", "type": "KeyError", "args": ["k"]}},
                    {"backend": "nope", "payload": 1},
                    {"payload": {"$nope": 1}},
                    "not an object",
                    {"payload": [3, 4], "backend": "classic"},
                ]
            },
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert len(results) == 7
        assert results[0]["result"] == "slow"
        assert results[1] == {
            "result": 3,
            "backend": "unix",
            "elapsed_ms": results[1]["elapsed_ms"],
        }
        assert results[2]["error"]["status"] == 502
        assert results[2]["error"]["exception"] == {"type": "KeyError", "args": ["k"]}
        assert results[3]["error"]["type"] == problem_type("unknown-backend")
        assert results[4]["error"]["type"] == problem_type("invalid-payload")
        assert results[4]["error"]["errors"][0]["pointer"] == "#/requests/4/payload"
        assert results[5]["error"]["type"] == problem_type("invalid-request")
        assert results[5]["error"]["pointer"] == "#/requests/5"
        assert results[6]["result"] == 7
        request_id = response.headers["x-request-id"]
        assert all(r["error"]["request_id"] == request_id for r in results if "error" in r)


async def test_batch_runs_concurrently_within_the_bound(demo, tmp_path):
    settings = {
        "gateway": {"batch_concurrency": 2},
        "backends": {"demo": backend_config(demo, tmp_path, max_connections=8)},
    }
    sleep = {"payload": {"op": "sleep", "seconds": 0.3}}
    async with serve_gateway(settings) as gw:
        started = time.monotonic()
        response = await gw.client.post("/compute/batch", json={"requests": [sleep] * 4})
        elapsed = time.monotonic() - started
        assert [r["result"] for r in response.json()["results"]] == [0.3] * 4
        # Two at a time: at least two rounds, and far less than four.
        assert elapsed >= 0.6
        assert elapsed < 1.15


async def test_batch_limits(settings):
    settings["gateway"]["batch_max_requests"] = 3
    async with serve_gateway(settings) as gw:
        response = await gw.client.post("/compute/batch", json={"requests": [{"payload": 1}] * 4})
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "#/requests"
        for body in ({"requests": {}}, {"request": []}, [], {"requests": [], "x": 1}):
            response = await gw.client.post("/compute/batch", json=body)
            assert response.status_code == 422, body
        response = await gw.client.post("/compute/batch", json={"requests": []})
        assert response.json() == {"results": []}


async def test_request_id_taken_or_made(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute", json={"payload": [1, 1]}, headers={"X-Request-ID": "trace-42.a:b"}
        )
        assert response.headers["x-request-id"] == "trace-42.a:b"
        response = await gw.client.post(
            "/compute", json={"payload": "x"}, headers={"X-Request-ID": "bad id\twith spaces"}
        )
        made = response.headers["x-request-id"]
        assert made != "bad id\twith spaces"
        assert len(made) == 24
        assert response.json()["request_id"] == made


async def test_compute_on_a_many_reply_backend_says_later_replies_are_discarded(demo, tmp_path):
    settings = {"backends": {"demo": backend_config(demo, tmp_path, replies="many")}}
    async with serve_gateway(settings) as gw:
        payload = {"op": "stream", "count": 3, "value": "s"}
        response = await gw.client.post("/compute", json={"payload": payload})
        assert response.status_code == 200
        assert response.json()["result"] == {"seq": 0, "value": "s"}
        assert response.headers["connbridge-extra-replies"] == "discarded"
        pool = gw.state.backends["demo"].running_pool()

        async def counted() -> bool:
            return pool.stats()["discarded_replies"] == 2

        await wait_until(counted, what="the two later replies counted")
        metrics = (await gw.client.get("/metrics")).text
        assert 'connbridge_pool_discarded_replies_total{backend="demo"} 2.0' in metrics
    single = {"backends": {"demo": backend_config(demo, tmp_path)}}
    async with serve_gateway(single) as gw:
        response = await gw.client.post("/compute", json={"payload": [1, 2]})
        assert "connbridge-extra-replies" not in response.headers


async def test_compute_on_a_pipelined_classic_server(classic, tmp_path):
    config = backend_config(classic, tmp_path, pipeline=32, max_connections=1)
    async with serve_gateway({"backends": {"classic": config}}) as gw:
        responses = await asyncio.gather(
            *(gw.client.post("/compute", json={"payload": [i, 1000]}) for i in range(200))
        )
        assert [r.json()["result"] for r in responses] == [i + 1000 for i in range(200)]
        stats = gw.state.backends["classic"].running_pool().stats()
        assert stats["open"] == 1 and stats["errors"] == {}
    assert classic.alive()
