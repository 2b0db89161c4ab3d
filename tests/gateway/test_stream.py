"""POST /stream, POST and GET /backends/{name}/stream against real backends.

Every end rule and every place an error can happen (before the first reply,
mid-stream, the backend killed with SIGKILL, the timeout), each seen by the
client as a well-formed last item, with the pool's statistics back at their
baseline afterwards (nothing in use, nothing stalled).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import urlencode

import httpx
import pytest
from gateway_support import (
    HOSTILE,
    PROBLEM,
    backend_config,
    problem_type,
    serve_gateway,
    sha256_hex,
    wait_until,
)
from stream_support import ndjson_items, parse_sse, post_ndjson, results, stream_op

from gateway.log import ACCESS_LOGGER

pytestmark = pytest.mark.timeout(60)

KEY = "stream-test-key"


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


@pytest.fixture(scope="module")
def hostile(start_shared_backend):
    return start_shared_backend(HOSTILE)


@pytest.fixture(scope="module")
def classic(start_shared_backend):
    return start_shared_backend("classic")


def settings_for(backend, tmp_path, **extra):
    table = {"stream_idle_timeout": 0.5, **extra}
    return {"backends": {"b": backend_config(backend, tmp_path, **table)}}


async def settled(gw, name="b"):
    """Wait until the pool of ``name`` is back at rest: nothing in use, stalled or waiting."""
    pool = gw.state.backends[name].running_pool()

    async def at_rest():
        stats = pool.stats()
        return stats["in_use"] == 0 and stats["stalled_handshakes"] == 0 and stats["waiters"] == 0

    await wait_until(at_rest, what="the pool back at its baseline")
    assert gw.app.state.open_streams.open[name] == 0
    return pool.stats()


# -- the end rules ----------------------------------------------------------------------


async def test_a_count_ends_the_stream_and_the_connection_is_reused(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, max_connections=1)) as gw:
        for _ in range(3):
            items = await post_ndjson(
                gw.client, "/backends/b/stream", {"payload": stream_op(5), "replies": 5}
            )
            assert items == [*results(5), {"end": {"reason": "count"}}]
        stats = await settled(gw)
        assert stats["opened"] == 1 and stats["closed"] == {}  # a provable end: kept
        # /stream with the backend in the body, and a count shorter than the backend's stream.
        items = await post_ndjson(
            gw.client, "/stream", {"backend": "b", "payload": stream_op(9), "replies": 2}
        )
        assert items == [*results(2), {"end": {"reason": "count"}}]
        stats = await settled(gw)
        # The backend had more to say: those replies were not the next caller's.
        assert await gw.client.post("/compute", json={"payload": [2, 3]}) is not None
        assert (await gw.client.post("/compute", json={"payload": [2, 3]})).json()["result"] == 5


async def test_an_idle_gap_ends_the_stream_and_closes_the_connection(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path)) as gw:
        started = time.monotonic()
        items = await post_ndjson(gw.client, "/backends/b/stream", {"payload": stream_op(3)})
        assert items == [*results(3), {"end": {"reason": "idle"}}]
        assert time.monotonic() - started >= 0.5  # the backend's stream_idle_timeout
        # The request may only shorten it.
        items = await post_ndjson(
            gw.client,
            "/backends/b/stream",
            {"payload": stream_op(3, delay=0.3), "idle_timeout": 0.1},
        )
        assert items == [*results(1), {"end": {"reason": "idle"}}]
        stats = await settled(gw)
        assert stats["closed"].get("stream_end") == 2
        metrics = (await gw.client.get("/metrics")).text
        assert 'connbridge_stream_ends_total{backend="b",reason="idle"} 2.0' in metrics
        assert 'connbridge_streams{backend="b"} 0.0' in metrics


async def test_a_sentinel_ends_the_stream_and_is_not_written(demo, tmp_path):
    sentinel = json.dumps({"seq": 2, "value": "v"})
    config = settings_for(demo, tmp_path, stream_end="sentinel", stream_sentinel=sentinel)
    async with serve_gateway(config) as gw:
        items = await post_ndjson(gw.client, "/backends/b/stream", {"payload": stream_op(3)})
        assert items == [*results(2), {"end": {"reason": "sentinel"}}]
        # The default sentinel is null; a first reply that is the sentinel: no results at all.
        stats = await settled(gw)
        assert stats["closed"] == {}
    config = settings_for(demo, tmp_path, stream_end="sentinel")
    async with serve_gateway(config) as gw:
        payload = {"op": "echo", "value": None}
        items = await post_ndjson(gw.client, "/backends/b/stream", {"payload": payload})
        assert items == [{"end": {"reason": "sentinel"}}]
        # 0 is not null, nor is False (types are compared too).
        for value in (0, False):
            payload = {"op": "echo", "value": value}
            items = await post_ndjson(
                gw.client, "/backends/b/stream", {"payload": payload, "idle_timeout": 0.05}
            )
            assert items == [{"result": value}, {"end": {"reason": "idle"}}]
        await settled(gw)


async def test_the_backend_closing_ends_the_stream(hostile, tmp_path):
    async with serve_gateway(settings_for(hostile, tmp_path)) as gw:
        body = {"payload": {"op": "series", "steps": ["ok", "ok", "close"]}}
        items = await post_ndjson(gw.client, "/backends/b/stream", body)
        assert items == [{"result": "ok"}, {"result": "ok"}, {"end": {"reason": "closed"}}]
        # Where a count was asked, an early close is a broken stream.
        items = await post_ndjson(gw.client, "/backends/b/stream", {**body, "replies": 3})
        assert items[:2] == [{"result": "ok"}, {"result": "ok"}]
        assert items[2]["error"]["type"] == problem_type("backend-connection-lost")
        assert len(items) == 3
        await settled(gw)
    # stream_end = "closed": no idle end, the backend's close is the end.
    config = settings_for(hostile, tmp_path, stream_end="closed", stream_idle_timeout=0.01)
    async with serve_gateway(config) as gw:
        items = await post_ndjson(gw.client, "/backends/b/stream", body)
        assert items[-1] == {"end": {"reason": "closed"}}
        await settled(gw)


async def test_a_backend_whose_streams_end_by_count_needs_replies(demo, tmp_path):
    config = settings_for(demo, tmp_path, stream_end="count", max_replies=10)
    async with serve_gateway(config) as gw:
        response = await gw.client.post("/backends/b/stream", json={"payload": stream_op(3)})
        assert response.status_code == 422
        assert response.json()["errors"][0]["pointer"] == "#/replies"
        response = await gw.client.post(
            "/backends/b/stream", json={"payload": stream_op(3), "replies": 11}
        )
        assert response.status_code == 422
        assert "max_replies" in response.json()["errors"][0]["detail"]
        items = await post_ndjson(
            gw.client, "/backends/b/stream", {"payload": stream_op(3), "replies": 3}
        )
        assert items[-1] == {"end": {"reason": "count"}}
        await settled(gw)


async def test_max_replies_cuts_an_endless_stream_with_an_error(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, max_replies=4)) as gw:
        items = await post_ndjson(gw.client, "/backends/b/stream", {"payload": stream_op(10)})
        assert items[:4] == results(4)
        assert items[4]["error"]["type"] == problem_type("too-many-replies")
        assert len(items) == 5
        await settled(gw)


# -- errors, by where they happen --------------------------------------------------------


async def test_errors_before_the_first_reply_are_problem_responses(demo, hostile, tmp_path):
    config = {
        "backends": {
            "b": backend_config(demo, tmp_path, max_reply_bytes=1000),
            "h": backend_config(hostile, tmp_path),
        }
    }
    async with serve_gateway(config) as gw:
        client = gw.client

        async def problem(path, body, status, slug, headers=None):
            response = await client.post(path, json=body, headers=headers)
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["type"] == problem_type(slug)
            return response

        sleep = {"op": "sleep", "seconds": 1.0, "value": 1}
        await problem(
            "/backends/b/stream", {"payload": sleep, "timeout": 0.2}, 504, "backend-timeout"
        )
        await problem(
            "/backends/b/stream", {"payload": {"op": "close"}}, 502, "backend-connection-lost"
        )
        big = stream_op(2, value="x" * 5000)
        await problem("/backends/b/stream", {"payload": big}, 502, "backend-protocol-error")
        raised = {"op": "raise", "type": "KeyError", "args": ["k"]}
        response = await problem(
            "/backends/b/stream", {"payload": raised}, 502, "backend-exception"
        )
        assert response.json()["exception"] == {"type": "KeyError", "args": ["k"]}
        await problem("/backends/h/stream", {"payload": {"op": "global"}}, 502, "refused-pickle")
        await problem("/backends/nope/stream", {"payload": 1}, 404, "unknown-backend")
        await problem("/stream", {"payload": 1}, 422, "invalid-request")  # two backends, no default
        await problem("/backends/b/stream", {"payload": {"$nope": 1}}, 422, "invalid-payload")
        bad = {"payload": 1, "replies": 0, "idle_timeout": "x", "extra": 1}
        response = await problem("/backends/b/stream", bad, 422, "invalid-request")
        pointers = sorted(e["pointer"] for e in response.json()["errors"])
        assert pointers == ["#/extra", "#/idle_timeout", "#/replies"]
        await problem(
            "/backends/b/stream", {"payload": 1}, 406, "not-acceptable", {"Accept": "text/html"}
        )
        response = await client.post(
            "/backends/b/stream", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        await settled(gw, "b")
        await settled(gw, "h")
    assert demo.alive() and hostile.alive()


@pytest.mark.parametrize(
    ("step", "slug"),
    [
        ("raise", "backend-exception"),
        ("global", "refused-pickle"),
        ("surrogate", "unconvertible-result"),
        ("huge-frame", "backend-protocol-error"),
        ("not-pickle", "refused-pickle"),
    ],
)
async def test_an_error_mid_stream_is_the_last_item(hostile, tmp_path, step, slug):
    async with serve_gateway(settings_for(hostile, tmp_path)) as gw:
        body = {"payload": {"op": "series", "steps": ["ok", "ok", step, "ok"]}}
        items = await post_ndjson(gw.client, "/backends/b/stream", body)
        assert items[:2] == [{"result": "ok"}, {"result": "ok"}]
        error = items[2]["error"]
        assert len(items) == 3
        assert error["type"] == problem_type(slug)
        assert error["backend"] == "b" and error["instance"] == "/backends/b/stream"
        assert error["request_id"]
        stats = await settled(gw)
        assert stats["closed"].get("stream_error") == 1
        # The same, as an SSE event.
        async with gw.client.stream(
            "POST", "/backends/b/stream", json=body, headers={"Accept": "text/event-stream"}
        ) as response:
            events = parse_sse((await response.aread()).decode())
        assert [e["event"] for e in events] == ["message", "message", "error"]
        assert events[2]["data"]["error"]["type"] == problem_type(slug)
        await settled(gw)


async def test_the_timeout_mid_stream_is_the_last_item(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, stream_idle_timeout=5)) as gw:
        body = {"payload": stream_op(5, delay=0.4), "timeout": 1.0}
        items = await post_ndjson(gw.client, "/backends/b/stream", body)
        assert items[:-1] == results(len(items) - 1) and 1 <= len(items) - 1 <= 3
        assert items[-1]["error"]["type"] == problem_type("backend-timeout")
        await settled(gw)
    assert demo.alive()


@pytest.mark.parametrize("counted", [False, True])
async def test_a_backend_killed_mid_stream(start_backend, tmp_path, counted):
    backend = start_backend("demo")
    config = settings_for(backend, tmp_path, stream_idle_timeout=10)
    async with serve_gateway(config) as gw:
        body = {"payload": stream_op(100, delay=0.05)}
        if counted:
            body["replies"] = 100
        async with gw.client.stream("POST", "/backends/b/stream", json=body) as response:
            lines = response.aiter_lines()
            assert json.loads(await anext(lines)) == results(1)[0]
            assert backend.kill() == -9
            items = [json.loads(line) async for line in lines]
        assert items[:-1] == results(len(items))[1:]
        if counted:  # 100 were promised: a broken stream
            assert items[-1]["error"]["type"] == problem_type("backend-connection-lost")
        else:  # no end was promised: the backend's close ends it
            assert items[-1] == {"end": {"reason": "closed"}}
        await settled(gw)


async def test_a_client_that_goes_away_frees_the_connection(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, max_streams=1)) as gw:
        for accept in ("application/x-ndjson", "text/event-stream"):
            body = {"payload": stream_op(1000, delay=0.01), "replies": 1000}
            async with gw.client.stream(
                "POST", "/backends/b/stream", json=body, headers={"Accept": accept}
            ) as response:
                async for _ in response.aiter_lines():
                    break
            stats = await settled(gw)
        assert stats["closed"].get("stream_error", 0) + stats["closed"].get("stream_end", 0) == 2
        metrics = (await gw.client.get("/metrics")).text
        assert 'connbridge_stream_ends_total{backend="b",reason="gone"} 2.0' in metrics
        # The slot is free again.
        items = await post_ndjson(
            gw.client, "/backends/b/stream", {"payload": stream_op(2), "replies": 2}
        )
        assert items[-1] == {"end": {"reason": "count"}}
    assert demo.alive()


async def test_max_streams_answers_503_past_it(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, max_streams=1)) as gw:
        body = {"payload": stream_op(3, delay=0.3), "replies": 3}
        async with gw.client.stream("POST", "/backends/b/stream", json=body) as response:
            lines = response.aiter_lines()
            await anext(lines)
            refused = await gw.client.post("/backends/b/stream", json=body)
            assert refused.status_code == 503
            assert refused.json()["type"] == problem_type("too-many-streams")
            assert refused.headers["retry-after"] == "1"
            rest = [json.loads(line) async for line in lines]
        assert rest[-1] == {"end": {"reason": "count"}}
        await settled(gw)


# -- SSE, GET and the key ------------------------------------------------------------------


async def test_sse_events_count_from_zero_with_heartbeats_while_silent(demo, tmp_path):
    config = settings_for(demo, tmp_path, stream_heartbeat_interval=0.05, stream_idle_timeout=5)
    async with serve_gateway(config) as gw:
        body = {"payload": stream_op(3, delay=0.3), "replies": 3}
        headers = {"Accept": "text/event-stream"}
        async with gw.client.stream(
            "POST", "/backends/b/stream", json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            events = parse_sse((await response.aread()).decode())
        assert [e["id"] for e in events] == ["0", "1", "2", None]
        assert [e["data"] for e in events[:3]] == results(3)
        assert events[3]["event"] == "end" and events[3]["data"] == {"end": {"reason": "count"}}
        # 0.3 s gaps, a heartbeat every 0.05 s: several comments before replies 1 and 2.
        assert events[0]["comments"] == 0
        assert events[1]["comments"] >= 2 and events[2]["comments"] >= 2
        await settled(gw)


async def test_get_for_event_source_with_the_key_in_the_query(demo, tmp_path, caplog):
    config = {
        **settings_for(demo, tmp_path),
        "auth": {"keys": [{"name": "k", "sha256": sha256_hex(KEY)}]},
    }
    query = {
        "payload": json.dumps(stream_op(3, value="é")),
        "replies": "3",
        "result_format": "tagged",
    }
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with serve_gateway(config) as gw:
        headers = {"Accept": "text/event-stream"}
        url = "/backends/b/stream?" + urlencode({**query, "access_token": KEY})
        async with gw.client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            events = parse_sse((await response.aread()).decode())
        assert [e["data"] for e in events] == [*results(3, "é"), {"end": {"reason": "count"}}]
        # With the header instead; without a key, 401; NDJSON works on GET too.
        url = "/backends/b/stream?" + urlencode(query)
        async with gw.client.stream(
            "GET", url, headers={"Authorization": f"Bearer {KEY}"}
        ) as response:
            assert (await ndjson_items(response))[-1] == {"end": {"reason": "count"}}
        assert (await gw.client.get(url)).status_code == 401
        bad = "/backends/b/stream?" + urlencode({"access_token": "wrong", **query})
        assert (await gw.client.get(bad)).status_code == 401
        # A reconnecting EventSource is told to stop.
        reconnect = {"Authorization": f"Bearer {KEY}", "Last-Event-ID": "2"}
        assert (await gw.client.get(url, headers=reconnect)).status_code == 204
        # A bad query names its parameters.
        auth = {"Authorization": f"Bearer {KEY}"}
        response = await gw.client.get(
            "/backends/b/stream?payload=1&replies=x&replies=2&color=red", headers=auth
        )
        assert response.status_code == 422
        assert sorted(e["parameter"] for e in response.json()["errors"]) == [
            "color",
            "replies",
            "replies",
        ]
        assert all(e["in"] == "query" for e in response.json()["errors"])
        response = await gw.client.get("/backends/b/stream?payload=%7B", headers=auth)
        assert response.status_code == 400
        assert response.json()["errors"][0]["parameter"] == "payload"
        await settled(gw)
    # The gateway's own log lines (the test's httpx client logs its URLs, key
    # included, when another test has left the root logger at INFO).
    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("httpx")
    )
    assert "/backends/b/stream" in logged
    assert KEY not in logged and "access_token" not in logged


async def test_the_classic_server_streams_one_reply_per_message_and_survives(classic, tmp_path):
    config = settings_for(classic, tmp_path, max_connections=1)
    async with serve_gateway(config) as gw:
        for i in range(3):
            items = await post_ndjson(
                gw.client, "/backends/b/stream", {"payload": [i, 10], "replies": 1}
            )
            assert items == [{"result": i + 10}, {"end": {"reason": "count"}}]
        stats = await settled(gw)
        assert stats["opened"] == 1  # one connection, kept: the classic server serves one
        response = await gw.client.post("/backends/b/compute", json={"payload": [1, 2]})
        assert response.json()["result"] == 3
    assert classic.alive()


async def test_a_reader_that_pauses_gets_every_reply_in_order(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path, stream_idle_timeout=10)) as gw:
        value = "z" * 10_000
        body = {"payload": stream_op(2000, value=value), "replies": 2000}
        raw = httpx.AsyncClient(base_url=gw.url, timeout=30)
        async with raw, raw.stream("POST", "/backends/b/stream", json=body) as response:
            lines = response.aiter_lines()
            assert json.loads(await anext(lines))["result"]["seq"] == 0
            # A pause long enough for the backend to send all 20 MB if it could (the
            # gateway's memory is measured in test_stream_load.py).
            await asyncio.sleep(0.5)
            count = 1
            async for line in lines:
                item = json.loads(line)
                if "result" in item:
                    assert item["result"]["seq"] == count
                    count += 1
            assert item == {"end": {"reason": "count"}} and count == 2000
        await settled(gw)


# -- settings, negotiation and the document ------------------------------------------------


def test_the_stream_keys_are_checked_with_the_backend_table(tmp_path):
    from gateway.settings import ConfigError, load_settings

    def load(extra: str) -> object:
        path = tmp_path / "c.toml"
        path.write_text(f'[backends.b]\naddress = "127.0.0.1:1"\n{extra}\n')
        return load_settings(path)

    backend = load('stream_end = "sentinel"\nstream_sentinel = \'{"$tuple": [1, "done"]}\'')
    assert backend.backends["b"].sentinel == (1, "done")
    assert load("").backends["b"].sentinel is None  # "null" by default
    for bad, key in [
        ('stream_sentinel = "{"', "stream_sentinel"),
        ("stream_sentinel = '{\"$nope\": 1}'", "stream_sentinel"),
        ('stream_end = "never"', "stream_end"),
        ("max_streams = 0", "max_streams"),
        ("stream_idle_timeout = -1", "stream_idle_timeout"),
    ]:
        with pytest.raises(ConfigError, match=f"backends.b.{key}"):
            load(bad)


def test_accept_picks_the_framing():
    from gateway.problems import NotAcceptable
    from gateway.streams import NDJSON_FRAMING, SSE_FRAMING, pick_framing

    assert pick_framing(None) is NDJSON_FRAMING
    assert pick_framing("*/*") is NDJSON_FRAMING
    assert pick_framing("text/event-stream") is SSE_FRAMING
    assert pick_framing("text/html, text/event-stream;q=0.9") is SSE_FRAMING
    assert pick_framing("application/x-ndjson;q=0, text/*") is SSE_FRAMING
    for refused in ("text/html", "application/json", "application/x-ndjson;q=0.0"):
        with pytest.raises(NotAcceptable):
            pick_framing(refused)


async def test_the_document_describes_the_stream_operations(demo, tmp_path):
    async with serve_gateway(settings_for(demo, tmp_path)) as gw:
        document = (await gw.client.get("/openapi.json")).json()
    paths = document["paths"]
    operations = {
        ("post", "/stream"),
        ("post", "/backends/{name}/stream"),
        ("get", "/backends/{name}/stream"),
    }
    for method, path in operations:
        ok = paths[path][method]["responses"]["200"]["content"]
        assert set(ok) == {"application/x-ndjson", "text/event-stream"}
        assert ok["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/StreamItem"}
    schemas = document["components"]["schemas"]
    assert [one["$ref"].rsplit("/", 1)[1] for one in schemas["StreamItem"]["anyOf"]] == [
        "StreamResult",
        "StreamEnd",
        "StreamError",
    ]
    assert set(schemas["StreamRequest"]["properties"]) >= {"payload", "replies", "idle_timeout"}
    get = paths["/backends/{name}/stream"]["get"]
    names = {p["name"] for p in get["parameters"]}
    assert names >= {"name", "payload"}
    # No API keys here: the key parameter is documented only with keys
    # (tests/gateway/test_openapi.py checks it is there then).
    assert "access_token" not in names
    reasons = schemas["StreamEndReason"]["properties"]["reason"]["enum"]
    assert reasons == ["sentinel", "count", "closed", "idle"]


async def test_no_route_sees_an_access_token_in_the_query(demo, tmp_path):
    from starlette.responses import PlainTextResponse

    async def query(request):
        return PlainTextResponse(request.scope["query_string"].decode())

    def setup(app):
        app.add_route("/query", query)

    async with serve_gateway(settings_for(demo, tmp_path), setup=setup) as gw:
        response = await gw.client.get("/query?a=1&access_token=secret&b=%20")
        assert response.text == "a=1&b=%20"
        response = await gw.client.get("/query?access%5Ftoken=secret")
        assert response.text == ""
