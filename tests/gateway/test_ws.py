"""WS /ws: many calls on one socket, against the served app and a real demo backend."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml
from gateway_support import (
    backend_config,
    problem_type,
    serve_gateway,
    sha256_hex,
    two_backends_no_default,
    wait_until,
)
from websockets.exceptions import InvalidStatus
from ws_support import (
    WAIT,
    config,
    hub,
    open_ws,
    pool_stats,
    recv_json,
    serve_with_ws_options,
    server_frames,
    small_buffer_socket,
    until_closed,
)

from gateway.cli import uvicorn_options
from gateway.routes.ws import CALLS_ROUTE, SESSION_ROUTE
from gateway.settings import ConfigError, Settings, WebSocketSettings, load_settings

pytestmark = pytest.mark.timeout(60)

KEY = "ws-test-key-0001"
SCOPED = "ws-scoped-key-0002"


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


async def test_thousand_calls_on_one_socket(demo, tmp_path):
    count = 1000
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw) as ws:

        async def send_all():
            for i in range(count):
                # Ids of several JSON types, all distinct.
                ident = i if i % 3 else f"call-{i}"
                await ws.send(orjson.dumps({"id": ident, "payload": [i, 1000]}).decode())

        sender = asyncio.create_task(send_all())
        replies = [await recv_json(ws) for _ in range(count)]
        await sender
        answered = {}
        for reply in replies:
            ident = reply["id"]
            key = ident if isinstance(ident, int) else int(ident.removeprefix("call-"))
            assert key not in answered, f"call {ident!r} answered twice"
            answered[key] = reply
        assert sorted(answered) == list(range(count))
        for i, reply in answered.items():
            assert reply == {"id": i if i % 3 else f"call-{i}", "result": i + 1000}
        assert hub(gw).in_flight_peak <= WebSocketSettings().max_in_flight


async def test_replies_come_as_calls_finish(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw) as ws:
        await ws.send('{"id": "slow", "payload": {"op": "sleep", "seconds": 0.5, "value": 1}}')
        await ws.send('{"id": "fast", "payload": [1, 2]}')
        assert await recv_json(ws) == {"id": "fast", "result": 3}
        assert await recv_json(ws) == {"id": "slow", "result": 1}


async def test_backpressure_stops_reading_at_the_bound(demo, tmp_path):
    # A slow backend and more calls than the bound (64, the default): every call
    # is answered, and the gateway never had more than 64 running, which means it
    # stopped reading the socket: each message read starts its call at once.
    count = 150
    settings = config(demo, tmp_path, max_connections=16)
    async with serve_gateway(settings) as gw, open_ws(gw) as ws:
        for i in range(count):
            await ws.send(
                orjson.dumps(
                    {"id": i, "payload": {"op": "sleep", "seconds": 0.05, "value": i}}
                ).decode()
            )
        replies = [await recv_json(ws) for _ in range(count)]
        assert sorted(r["id"] for r in replies) == list(range(count))
        assert all(r["result"] == r["id"] for r in replies)
        assert hub(gw).in_flight_peak == 64
        stats = pool_stats(gw)
        assert stats["open"] <= 16
        assert stats["in_use"] == 0


async def test_a_smaller_bound(demo, tmp_path):
    settings = config(demo, tmp_path, websocket={"max_in_flight": 3}, max_connections=8)
    async with serve_gateway(settings) as gw, open_ws(gw) as ws:
        for i in range(12):
            await ws.send(
                orjson.dumps({"id": i, "payload": {"op": "sleep", "seconds": 0.02}}).decode()
            )
        replies = [await recv_json(ws) for _ in range(12)]
        assert sorted(r["id"] for r in replies) == list(range(12))
        assert hub(gw).in_flight_peak == 3


async def test_malformed_messages_get_error_replies(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw) as ws:

        async def ask(message):
            await ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())
            return await recv_json(ws)

        reply = await ask("this is not JSON")
        assert reply["id"] is None
        assert reply["error"]["type"] == problem_type("malformed-json")
        assert reply["error"]["status"] == 400
        assert reply["error"]["instance"] == "/ws"
        assert reply["error"]["request_id"]

        reply = await ask("[1, 2]")
        assert reply["id"] is None
        assert reply["error"]["type"] == problem_type("invalid-request")

        reply = await ask('{"payload": [1, 2]}')
        assert reply["id"] is None
        assert reply["error"]["errors"] == [{"detail": "'id' is required", "pointer": "#/id"}]

        reply = await ask('{"id": 7, "payload": [1, 2], "extra": true}')
        assert reply["id"] == 7
        assert reply["error"]["errors"][0]["pointer"] == "#/extra"

        reply = await ask('{"id": {"any": ["json"]}}')
        assert reply["id"] == {"any": ["json"]}
        assert reply["error"]["errors"][0]["pointer"] == "#/payload"

        reply = await ask('{"id": 8, "backend": "nope", "payload": 1}')
        assert reply == {"id": 8, "error": reply["error"]}
        assert reply["error"]["type"] == problem_type("unknown-backend")

        reply = await ask('{"id": 9, "payload": {"$nope": 1}}')
        assert reply["error"]["type"] == problem_type("invalid-payload")
        assert reply["error"]["backend"] == "demo"

        reply = await ask({"id": 10, "payload": {"op": "raise", "type": "KeyError", "args": ["k"]}})
        assert reply["error"]["status"] == 502
        assert reply["error"]["exception"] == {"type": "KeyError", "args": ["k"]}

        reply = await ask('{"id": 11, "payload": {"op": "sleep", "seconds": 0.5}, "timeout": 0.1}')
        assert reply["error"]["type"] == problem_type("backend-timeout")

        await ws.send(b'{"id": 12, "payload": [1, 2]}')
        reply = await recv_json(ws)
        assert reply["id"] is None
        assert reply["error"]["errors"][0]["detail"] == "binary messages are not supported"

        # Integers beyond 64 bits stay exact, in the id and in the payload.
        big = 2**70
        reply = await ask(f'{{"id": {big}, "payload": [{big}, 1]}}')
        assert reply == {"id": big, "result": {"$int": str(big + 1)}}

        echo = {"op": "echo", "value": {"$tuple": [1]}}
        reply = await ask({"id": "tagged", "payload": echo, "result_format": "tagged"})
        assert reply == {"id": "tagged", "result": {"$tuple": [1]}}

        # After all that, the socket still works.
        assert await ask('{"id": "last", "payload": [2, 3]}') == {"id": "last", "result": 5}


async def test_client_disconnects_mid_call(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        async with open_ws(gw) as ws:
            await ws.send('{"id": 1, "payload": {"op": "sleep", "seconds": 0.5, "value": "late"}}')

            async def call_running():
                return pool_stats(gw)["in_use"] == 1

            await wait_until(call_running, what="the call to reach the pool")
        # The client is gone: the call is cancelled and its connection drained
        # (the late reply is read and thrown away) before it is used again.

        async def back_to_baseline():
            stats = pool_stats(gw)
            return stats["in_use"] == 0 and stats["draining"] == 0 and not hub(gw).sockets["/ws"]

        await wait_until(back_to_baseline, what="the pool to return to its baseline")
        assert hub(gw).closes[1000] == 1
        # The drained connection answers the next caller with its own reply.
        async with open_ws(gw) as ws:
            await ws.send('{"id": 2, "payload": [20, 22]}')
            assert await recv_json(ws) == {"id": 2, "result": 42}


async def test_slow_reader_is_disconnected(demo, tmp_path):
    # Each reply is 200 kB; the client's socket has a tiny receive buffer and
    # its library queues one message. Once a write has waited send_timeout,
    # the gateway drops the socket with 1008 instead of buffering replies.
    count = 200
    settings = config(
        demo,
        tmp_path,
        websocket={"send_timeout": 1.0, "send_queue": 4, "max_in_flight": 8},
        max_connections=8,
    )
    async with serve_gateway(settings) as gw:
        sock = small_buffer_socket(gw.port)
        # No compression: it would shrink these replies to nothing.
        async with open_ws(gw, sock=sock, max_queue=1, max_size=None, compression=None) as ws:
            call = {"op": "echo", "value": "x" * 200_000}

            async def send_all():
                # Blocks once the gateway stops reading, as a real client would.
                for i in range(count):
                    await ws.send(orjson.dumps({"id": i, "payload": call}).decode())

            sender = asyncio.create_task(send_all())

            async def dropped():
                return hub(gw).closes[1008] == 1

            try:
                await wait_until(dropped, timeout=20, what="the slow client to be dropped")
                closed = await until_closed(ws, timeout=20)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        assert closed.code == 1008
        assert closed.reason.startswith("slow-client: ")
        assert len(closed.messages) < count
        # The gateway stopped calling the backend: memory stayed bounded.
        assert pool_stats(gw)["calls"] < count

        async def released():
            stats = pool_stats(gw)
            return stats["in_use"] == 0 and stats["draining"] == 0 and not hub(gw).sockets["/ws"]

        await wait_until(released, what="the socket's calls to be released")


async def test_oversized_message_closes_with_1009(demo, tmp_path):
    settings = config(demo, tmp_path, websocket={"max_message_bytes": 1000})
    async with serve_gateway(settings) as gw, open_ws(gw) as ws:
        await ws.send('{"id": 1, "payload": [1, 2]}')
        assert await recv_json(ws) == {"id": 1, "result": 3}
        message = orjson.dumps({"id": 2, "payload": {"op": "echo", "value": "é" * 600}})
        await ws.send(message.decode())
        closed = await until_closed(ws)
        assert closed.code == 1009
        assert closed.reason == f"message-too-big: {len(message)} bytes; the limit is 1000"


async def test_uvicorn_refuses_oversized_frames_from_the_header(demo, tmp_path):
    # With the uvicorn options the command line uses, the protocol layer closes
    # with 1009 before the message is read, whatever the route.
    settings = Settings(**config(demo, tmp_path, websocket={"max_message_bytes": 1000}))
    assert uvicorn_options(settings.websocket) == {
        "ws": "websockets-sansio",
        "ws_max_size": 1000,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_per_message_deflate": False,
    }
    async with serve_with_ws_options(settings) as (_, port), open_ws(port) as ws:
        await ws.send("x" * 1001)
        closed = await until_closed(ws)
    assert closed.code == 1009


async def test_keepalive_pings_drop_a_dead_client(demo, tmp_path):
    # A client that completes the handshake and then answers nothing: the
    # server pings it, and closes the socket when no pong comes.
    websocket = {"ping_interval": 0.1, "ping_timeout": 0.3}
    settings = Settings(**config(demo, tmp_path, websocket=websocket))
    async with serve_with_ws_options(settings) as (ws_hub, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 101 ")
            rest = await asyncio.wait_for(reader.read(), WAIT)  # until the server's EOF
        finally:
            writer.close()
            await writer.wait_closed()
        frames = server_frames(rest)
        assert frames[0][0] == 0x9  # ping
        assert frames[-1][0] == 0x8  # close
        assert int.from_bytes(frames[-1][1][:2], "big") == 1011
        assert frames[-1][1][2:] == b"keepalive ping timeout"

        async def handler_done():
            return not ws_hub.sockets["/ws"]

        await wait_until(handler_done, what="the socket's handler to end")


async def test_auth_refusals_close_with_1008(demo, tmp_path, caplog, monkeypatch, request):
    # Earlier tests may have reconfigured logging (uvicorn's default config
    # does); collect uvicorn's lines with our own handler so the no-key check
    # below cannot pass vacuously.
    uvicorn_lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            uvicorn_lines.append(record.getMessage())

    uvicorn_log = logging.getLogger("uvicorn.error")
    keep = Keep(logging.DEBUG)
    uvicorn_log.addHandler(keep)
    monkeypatch.setattr(uvicorn_log, "disabled", False)
    old_level = uvicorn_log.level
    uvicorn_log.setLevel(logging.INFO)
    request.addfinalizer(lambda: (uvicorn_log.removeHandler(keep), uvicorn_log.setLevel(old_level)))
    settings = config(demo, tmp_path)
    settings["auth"] = {
        "keys": [
            {"name": "all", "sha256": sha256_hex(KEY)},
            {"name": "scoped", "sha256": sha256_hex(SCOPED), "backends": ["other"]},
        ]
    }
    settings["backends"]["other"] = backend_config(demo, tmp_path)
    settings["gateway"] = {"default_backend": "demo"}
    caplog.set_level(logging.INFO)
    async with serve_gateway(settings) as gw:
        calls_before = pool_stats(gw)["calls"]
        for path, headers in [
            ("/ws", {}),
            ("/ws", {"Authorization": "Bearer wrong"}),
            ("/ws?access_token=wrong", {}),
            ("/ws", {"Authorization": f"Basic {KEY}"}),
        ]:
            async with open_ws(gw, path, headers=headers) as ws:
                closed = await until_closed(ws)
            assert closed.code == 1008, (path, headers)
            assert closed.reason.startswith("unauthorized: "), closed.reason
            assert closed.messages == []
        # Nothing reached the backend.
        assert pool_stats(gw)["calls"] == calls_before

        async with open_ws(gw, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send('{"id": 1, "payload": [1, 2]}')
            assert await recv_json(ws) == {"id": 1, "result": 3}
        async with open_ws(gw, f"/ws?x=1&access_token={SCOPED}") as ws:
            await ws.send('{"id": 2, "backend": "other", "payload": [1, 2]}')
            assert await recv_json(ws) == {"id": 2, "result": 3}
            # A key's scope holds per call: this one may not use "demo".
            await ws.send('{"id": 3, "backend": "demo", "payload": [1, 2]}')
            reply = await recv_json(ws)
            assert reply["id"] == 3
            assert reply["error"]["type"] == problem_type("forbidden")
        # No route matches, so no route ever reads the token; uvicorn still
        # logs the refusal with the path and query string.
        with pytest.raises(InvalidStatus):
            async with open_ws(gw, f"/ws/unknown/path?access_token={KEY}&x=1"):
                pass
        with pytest.raises(InvalidStatus):  # the name percent-encoded
            async with open_ws(gw, f"/ws/unknown/path?access%5Ftoken={KEY}"):
                pass
    text = caplog.text + "\n".join(uvicorn_lines)
    assert "[accepted]" in text  # uvicorn logged the sockets...
    assert '"WebSocket /ws/unknown/path?x=1" 403' in text
    for secret in (KEY, SCOPED, "wrong"):
        assert secret not in text  # ...but never a key


async def test_call_backend_errors_point_at_its_backend_field(demo, tmp_path):
    # Changed behaviour (issue 11): a forbidden or unknown backend had no
    # pointer; a /ws call's pointers are into the message, as for its other fields.
    settings = two_backends_no_default(demo, tmp_path, key=KEY, a_only_key=SCOPED)

    async def ask(ws, message):
        await ws.send(orjson.dumps(message).decode())
        return await recv_json(ws)

    async with serve_gateway(settings) as gw:
        async with open_ws(gw, headers={"Authorization": f"Bearer {SCOPED}"}) as ws:
            assert await ask(ws, {"id": 1, "backend": "a", "payload": [1, 2]}) == {
                "id": 1,
                "result": 3,
            }
            missing = (await ask(ws, {"id": 2, "payload": [1, 2]}))["error"]
            assert missing["type"] == problem_type("invalid-request")
            assert [e["pointer"] for e in missing["errors"]] == ["#/backend"]
            forbidden = (await ask(ws, {"id": 3, "backend": "b", "payload": [1, 2]}))["error"]
            assert forbidden["type"] == problem_type("forbidden")
            assert forbidden["errors"] == [{"detail": forbidden["detail"], "pointer": "#/backend"}]
        async with open_ws(gw, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            unknown = (await ask(ws, {"id": 4, "backend": "nope", "payload": [1, 2]}))["error"]
            assert unknown["type"] == problem_type("unknown-backend")
            assert unknown["errors"] == [{"detail": unknown["detail"], "pointer": "#/backend"}]


async def test_plain_http_is_refused(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        response = await gw.client.get("/ws")
        assert response.status_code in (400, 404, 426)
        with pytest.raises(InvalidStatus):
            async with open_ws(gw, "/ws/nothing/here"):
                pass


async def test_metrics_count_open_sockets(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:

        async def gauge(endpoint):
            text = (await gw.client.get("/metrics")).text
            line = f'connbridge_websocket_connections{{endpoint="{endpoint}"}} '
            found = [row for row in text.splitlines() if row.startswith(line)]
            return float(found[0].removeprefix(line)) if found else 0.0

        async with open_ws(gw) as one, open_ws(gw) as two, open_ws(gw, "/ws/session/demo") as s:
            for ws in (one, two):
                await ws.send('{"id": 1, "payload": [1, 2]}')
                await recv_json(ws)
            await s.send("[1, 2]")
            assert await recv_json(s) == 3
            assert await gauge("/ws") == 2
            assert await gauge("/ws/session/{backend}") == 1
        started = time.monotonic()

        async def all_closed():
            return await gauge("/ws") == 0 and await gauge("/ws/session/{backend}") == 0

        await wait_until(all_closed, what="the gauge to return to 0")
        assert time.monotonic() - started < WAIT
        text = (await gw.client.get("/metrics")).text
        assert 'connbridge_requests_total{backend="demo",route="/ws",status="200"} 2.0' in text


ASYNCAPI = Path(__file__).resolve().parents[2] / "openapi" / "asyncapi.yaml"


def asyncapi_validator(document, component):
    # Refs in the document are "#/components/...": resolve them against it.
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


async def test_asyncapi_document_matches_the_messages(demo, tmp_path):
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    channels = document["channels"]
    assert channels["calls"]["address"] == CALLS_ROUTE
    assert channels["session"]["address"] == SESSION_ROUTE
    messages = document["components"]["messages"]
    for message in messages.values():
        component = message["payload"]["$ref"].rsplit("/", 1)[1]
        for example in message["examples"]:
            asyncapi_validator(document, component).validate(example["payload"])

    request = asyncapi_validator(document, "CallRequest")
    result = asyncapi_validator(document, "CallResult")
    error = asyncapi_validator(document, "CallError")
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw) as ws:
        sent = [
            # First, so that it takes the pool's idle connection at once: its
            # timeout then runs out with the backend holding the request (504).
            {"id": 2, "payload": {"op": "sleep", "seconds": 0.5}, "timeout": 0.05},
            {"id": 1, "payload": [5, 6]},
            {
                "id": "t",
                "payload": {"op": "echo", "value": {"$set": [1]}},
                "result_format": "tagged",
            },
            {"id": 3, "payload": {"op": "raise", "type": "ValueError", "args": ["bad"]}},
            {"id": 4, "payload": [1, 2], "nope": 1},
        ]
        for message in sent:
            request.validate({k: v for k, v in message.items() if k != "nope"})
            await ws.send(orjson.dumps(message).decode())
        await ws.send("not json")
        replies = [await recv_json(ws) for _ in range(len(sent) + 1)]
    for reply in replies:
        (result if "result" in reply else error).validate(reply)
    assert sum("result" in r for r in replies) == 2
    # Malformed, invalid, backend exception, timeout: all described by Problem.
    assert {r["error"]["status"] for r in replies if "error" in r} == {400, 422, 502, 504}


async def test_the_openapi_description_links_to_the_served_asyncapi_document(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        description = (await gw.client.get("/openapi.json")).json()["info"]["description"]
        assert "](static/asyncapi.yaml)" in description  # relative to /docs and /redoc
        served = await gw.client.get("/static/asyncapi.yaml")
    assert served.status_code == 200
    assert served.content == ASYNCAPI.read_bytes()


def test_websocket_settings_from_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "connbridge.toml"
    path.write_text(
        "[websocket]\nmax_in_flight = 8\nping_interval = 5.0\n\n"
        '[backends.a]\naddress = "127.0.0.1:1"\n'
    )
    monkeypatch.setenv("CONNBRIDGE_WEBSOCKET__SEND_TIMEOUT", "2.5")
    settings = load_settings(path).websocket
    assert (settings.max_in_flight, settings.ping_interval, settings.send_timeout) == (8, 5.0, 2.5)
    assert settings.max_message_bytes == 1024 * 1024
    path.write_text("[websocket]\nmax_in_flights = 8\nsend_queue = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "websocket.max_in_flights: unknown key" in str(info.value)
    assert "websocket.send_queue: " in str(info.value)


async def test_the_asyncapi_document_is_served_as_yaml_text(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        response = await gw.client.get("/static/asyncapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/yaml; charset=utf-8"
    assert response.text.startswith("asyncapi:") or "asyncapi:" in response.text[:200]
