"""WS /ws/session/{backend}: a socket bridged to a backend connection of its own."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
from gateway_support import HOSTILE, backend_config, serve_gateway, sha256_hex, wait_until
from ws_support import (
    WAIT,
    config,
    hub,
    open_ws,
    pool_stats,
    process_sockets,
    process_threads,
    recv_json,
    small_buffer_socket,
    until_closed,
)

pytestmark = pytest.mark.timeout(60)

KEY = "session-key-0001"


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


@pytest.fixture(scope="module")
def hostile(start_shared_backend):
    return start_shared_backend(HOSTILE)


async def no_session_left(gw):
    return not hub(gw).sessions and not hub(gw).sockets["/ws/session/{backend}"]


async def test_messages_are_the_backends_own(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        async with open_ws(gw, "/ws/session/demo") as ws:
            await ws.send("[5, 6]")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "11"
            await ws.send('{"op": "echo", "value": {"$tuple": [1, {"$bytes": "AAE="}]}}')
            # Exactly the JSON encoding of the object: no envelope.
            assert await asyncio.wait_for(ws.recv(), WAIT) == '[1,{"$bytes":"AAE="}]'
            await ws.send('{"op": "raise", "type": "KeyError", "args": ["k"]}')
            assert await recv_json(ws) == {"$exception": {"type": "KeyError", "args": ["k"]}}
        async with open_ws(gw, "/ws/session/demo?result_format=tagged") as ws:
            await ws.send('{"op": "echo", "value": {"$tuple": [1, 2]}}')
            assert await recv_json(ws) == {"$tuple": [1, 2]}
        # Sessions use connections of their own, never the pool's slots.
        stats = pool_stats(gw)
        assert stats["dedicated_opened"] == 2
        assert stats["calls"] == 0


async def test_one_message_several_replies(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw, "/ws/session/demo") as ws:
        await ws.send('{"op": "stream", "count": 3, "value": "v", "delay": 0.05}')
        # Sent while the stream is still coming: both directions run at once.
        await ws.send("[1, 2]")
        replies = [await recv_json(ws) for _ in range(4)]
        assert replies == [
            {"seq": 0, "value": "v"},
            {"seq": 1, "value": "v"},
            {"seq": 2, "value": "v"},
            3,
        ]


async def test_backend_killed_mid_session(start_backend, tmp_path):
    backend = start_backend("demo")
    async with serve_gateway(config(backend, tmp_path)) as gw:
        async with open_ws(gw, "/ws/session/demo") as ws:
            await ws.send("[1, 2]")
            assert await recv_json(ws) == 3
            await ws.send('{"op": "sleep", "seconds": 30}')
            backend.kill()
            closed = await until_closed(ws)
        assert closed.code == 1011
        assert closed.reason == "backend-connection-lost: the backend closed the connection"
        assert closed.messages == []
        await wait_until(lambda: no_session_left(gw), what="the session to end")


async def test_backend_closes_the_connection(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw, open_ws(gw, "/ws/session/demo") as ws:
        await ws.send('{"op": "stream", "count": 2, "value": 1}')
        await ws.send('{"op": "close"}')
        closed = await until_closed(ws)
        # What the backend sent before closing arrives first.
        assert closed.messages == [{"seq": 0, "value": 1}, {"seq": 1, "value": 1}]
        assert closed.code == 1011
        assert closed.reason == "backend-connection-lost: the backend closed the connection"


async def test_client_goes_backend_sees_eof(demo, tmp_path):
    async with serve_gateway(config(demo, tmp_path)) as gw:
        baseline = process_threads(demo.pid)
        async with open_ws(gw, "/ws/session/demo") as ws:
            await ws.send("[1, 2]")
            assert await recv_json(ws) == 3
            # The demo serves each connection in a thread of its own.
            assert process_threads(demo.pid) == baseline + 1
            await ws.send('{"op": "sleep", "seconds": 0.3}')  # in flight when the client goes

        async def backend_done():
            return process_threads(demo.pid) == baseline

        await wait_until(backend_done, what="the backend to see EOF and end its connection")
        await wait_until(lambda: no_session_left(gw), what="the session to end")
        assert hub(gw).closes[1000] == 1


async def test_many_sessions_leave_nothing_behind(demo, tmp_path):
    count, at_once = 500, 25
    settings = config(demo, tmp_path)
    async with serve_gateway(settings) as gw:
        # One session first, so that lazily created things exist in the baseline.
        async with open_ws(gw, "/ws/session/demo") as ws:
            await ws.send("[0, 0]")
            assert await recv_json(ws) == 0
        await wait_until(lambda: no_session_left(gw), what="the first session to end")
        threads = process_threads(demo.pid)
        sockets = process_sockets()
        tasks = len(asyncio.all_tasks())
        opened = pool_stats(gw)["dedicated_opened"]

        async def session(i):
            async with open_ws(gw, "/ws/session/demo") as ws:
                await ws.send(f"[{i}, 1]")
                assert await recv_json(ws) == i + 1

        limit = asyncio.Semaphore(at_once)

        async def bounded(i):
            async with limit:
                await session(i)

        await asyncio.gather(*(bounded(i) for i in range(count)))
        assert pool_stats(gw)["dedicated_opened"] == opened + count

        async def all_gone():
            return (
                await no_session_left(gw)
                and process_threads(demo.pid) == threads
                and process_sockets() == sockets
                and len(asyncio.all_tasks()) <= tasks
            )

        await wait_until(all_gone, timeout=20, what="every session's connection and task to go")
        assert hub(gw).closes[1000] == count + 1
        stats = pool_stats(gw)
        assert stats["in_use"] == 0 and stats["draining"] == 0


async def test_sessions_per_backend_are_capped(demo, tmp_path):
    settings = config(demo, tmp_path, websocket={"max_sessions_per_backend": 2})
    async with serve_gateway(settings) as gw:
        async with open_ws(gw, "/ws/session/demo") as one:
            async with open_ws(gw, "/ws/session/demo") as two:
                for ws in (one, two):
                    await ws.send("[1, 1]")
                    assert await recv_json(ws) == 2
                async with open_ws(gw, "/ws/session/demo") as three:
                    closed = await until_closed(three)
                assert closed.code == 1013
                assert closed.reason == "too-many-sessions: backend 'demo' has 2 sessions open"
            await wait_until(lambda: _sessions(gw, 1), what="the second session to end")
            async with open_ws(gw, "/ws/session/demo") as three:
                await three.send("[2, 2]")
                assert await recv_json(three) == 4
        # The REST calls were never affected.
        assert (await gw.client.post("/compute", json={"payload": [1, 2]})).json()["result"] == 3


async def _sessions(gw, count):
    return hub(gw).sessions["demo"] == count


async def test_idle_sessions_are_closed(demo, tmp_path):
    settings = config(demo, tmp_path, websocket={"session_idle_timeout": 0.3})
    async with serve_gateway(settings) as gw, open_ws(gw, "/ws/session/demo") as ws:
        await ws.send("[1, 2]")
        assert await recv_json(ws) == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        closed = await until_closed(ws)
        assert closed.code == 1001
        assert closed.reason == "idle-timeout: no message for 0.3 s"
        assert loop.time() - started >= 0.25


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        ("not json", 1007, "malformed-json: "),
        ('{"$nope": 1}', 1007, "invalid-payload: "),
        (b"[1, 2]", 1003, "binary-message: "),
        ("[" + "1," * 600 + "1]", 1009, "message-too-big: 1203 bytes; the limit is 1000"),
    ],
)
async def test_bad_client_messages(demo, tmp_path, message, code, reason):
    settings = config(demo, tmp_path, websocket={"max_message_bytes": 1000})
    async with serve_gateway(settings) as gw, open_ws(gw, "/ws/session/demo") as ws:
        await ws.send("[1, 2]")
        assert await recv_json(ws) == 3
        await ws.send(message)
        closed = await until_closed(ws)
        assert closed.messages == []
        assert closed.code == code
        assert closed.reason.startswith(reason)


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ("global", "refused-pickle: refused to unpickle global posixpath.join"),
        ("not-pickle", "refused-pickle: "),
        ("huge-frame", "backend-protocol-error: frame of 1073741824 bytes exceeds the limit"),
        ("surrogate", "unconvertible-result: "),
        ("shared", "unconvertible-result: the result would be larger than 268435456 bytes"),
    ],
)
async def test_backend_errors_close_with_1011(hostile, tmp_path, op, reason):
    async with serve_gateway(config(hostile, tmp_path)) as gw:
        async with open_ws(gw, "/ws/session/demo") as ws:
            await ws.send("[1, 2]")
            await ws.send(orjson.dumps({"op": op}).decode())
            closed = await until_closed(ws)
        assert closed.messages == [3]
        assert closed.code == 1011
        assert closed.reason.startswith(reason), closed.reason
        assert len(closed.reason.encode()) <= 123
        await wait_until(lambda: no_session_left(gw), what="the session to end")


async def test_refusals_before_any_backend_traffic(demo, tmp_path):
    settings = config(demo, tmp_path)
    settings["backends"]["other"] = backend_config(demo, tmp_path)
    settings["auth"] = {
        "keys": [
            {"name": "all", "sha256": sha256_hex(KEY)},
            {"name": "other", "sha256": sha256_hex("other-key-0002"), "backends": ["other"]},
        ]
    }
    async with serve_gateway(settings) as gw:
        for path, headers, reason in [
            ("/ws/session/demo", {}, "unauthorized: "),
            ("/ws/session/demo?access_token=wrong", {}, "unauthorized: unknown API key"),
            ("/ws/session/demo?access_token=other-key-0002", {}, "forbidden: "),
            ("/ws/session/nope?access_token=" + KEY, {}, "unknown-backend: "),
            ("/ws/session/demo?result_format=xml", {"Authorization": f"Bearer {KEY}"}, ""),
        ]:
            async with open_ws(gw, path, headers=headers) as ws:
                closed = await until_closed(ws)
            assert closed.code == 1008, path
            assert closed.reason.startswith(reason or "invalid-request: "), closed.reason
        assert pool_stats(gw)["dedicated_opened"] == 0
        assert pool_stats(gw, "other")["dedicated_opened"] == 0
        async with open_ws(gw, "/ws/session/demo?access_token=" + KEY) as ws:
            await ws.send("[1, 2]")
            assert await recv_json(ws) == 3


async def test_unreachable_backend(start_backend, tmp_path):
    backend = start_backend("demo")
    async with serve_gateway(config(backend, tmp_path)) as gw:
        backend.kill()
        async with open_ws(gw, "/ws/session/demo") as ws:
            closed = await until_closed(ws)
        assert closed.code == 1013
        assert closed.reason.startswith("backend-unreachable: "), closed.reason
        await wait_until(lambda: no_session_left(gw), what="the session to end")


async def test_slow_reader_is_disconnected(demo, tmp_path):
    # The backend streams 20 MB; the client reads nothing. The gateway stops
    # reading the backend once its queue is full, and drops the client with
    # 1008 once a write has waited send_timeout.
    settings = config(demo, tmp_path, websocket={"send_timeout": 1.0, "send_queue": 4})
    async with serve_gateway(settings) as gw:
        sock = small_buffer_socket(gw.port)
        async with open_ws(
            gw, "/ws/session/demo", sock=sock, max_queue=1, max_size=None, compression=None
        ) as ws:
            value = "x" * 10_000
            await ws.send(orjson.dumps({"op": "stream", "count": 2000, "value": value}).decode())

            async def dropped():
                return hub(gw).closes[1008] == 1

            await wait_until(dropped, timeout=20, what="the slow client to be dropped")
            closed = await until_closed(ws, timeout=20)
        assert closed.code == 1008
        assert closed.reason == "slow-client: nothing could be sent for 1 s"
        assert len(closed.messages) < 2000
        await wait_until(lambda: no_session_left(gw), what="the session to end")


async def test_gateway_shutdown_closes_sockets_and_sessions(demo, tmp_path):
    baseline = process_threads(demo.pid)
    async with contextlib.AsyncExitStack() as clients:
        async with serve_gateway(config(demo, tmp_path)) as gw:
            calls = await clients.enter_async_context(open_ws(gw))
            session = await clients.enter_async_context(open_ws(gw, "/ws/session/demo"))
            await calls.send('{"id": 1, "payload": [1, 2]}')
            assert await recv_json(calls) == {"id": 1, "result": 3}
            await session.send("[1, 2]")
            assert await recv_json(session) == 3
        # The server is down: uvicorn said "service restart" to every client...
        for ws in (calls, session):
            closed = await until_closed(ws)
            assert closed.code == 1012
    # ...and the session's backend connection was closed.

    async def backend_done():
        return process_threads(demo.pid) == baseline

    await wait_until(backend_done, what="the backend to see EOF")


async def test_payload_schema_applies_to_session_messages(demo, tmp_path):
    schema = {"type": "array", "items": {"type": "integer"}}
    settings = config(demo, tmp_path, payload_schema=schema)
    async with serve_gateway(settings) as gw, open_ws(gw, "/ws/session/demo") as ws:
        await ws.send("[1, 2]")
        assert await recv_json(ws) == 3
        await ws.send('{"op": "echo", "value": 1}')
        closed = await until_closed(ws)
        assert closed.code == 1007
        assert closed.reason.startswith(
            "invalid-payload: the payload does not match the schema of backend 'demo'"
        )
