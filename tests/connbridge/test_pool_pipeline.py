"""Pipelined connections: many requests in flight on one connection, replies in order.

The soak of test_pool.py again with ``pipeline = 32``: each call is answered
with its caller's own tag under random delays, timeouts and cancellations;
a backend killed with requests in flight fails every one of them and hangs
none; the fragile classic server survives being pipelined to.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from connbridge.errors import AcquireTimeout, CallInterrupted, CallTimeout
from connbridge.pool import Pool
from tests.conftest import TEST_AUTHKEY
from tests.connbridge.test_pool import settings, start, wait_until

KEY = TEST_AUTHKEY


async def test_replies_come_back_in_order_on_one_connection(start_backend) -> None:
    backend = await start(start_backend, "classic")
    s = settings(pipeline=32, max_connections=1)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        results = await asyncio.gather(*(pool.call((i, 1)) for i in range(500)))
        assert results == [i + 1 for i in range(500)]
        stats = pool.stats()
        assert stats["open"] == 1 and stats["errors"] == {}
    finally:
        await pool.close()
    assert backend.alive(), backend.output()
    assert "Traceback" not in backend.output()


@pytest.mark.parametrize("pipeline", [1, 32])
async def test_soak_no_reply_reaches_the_wrong_caller(start_backend, pipeline) -> None:
    backend = await start(start_backend, "demo")
    s = settings(pipeline=pipeline, max_connections=4, acquire_timeout=5.0, drain_timeout=5.0)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    rng = random.Random(pipeline)
    wrong: list[tuple[str, object]] = []
    outcomes = {"ok": 0, "timeout": 0, "exhausted": 0, "cancelled": 0}

    async def one(i: int) -> None:
        tag = f"call-{i}"
        delay = rng.choice([0, 0, 0, 0.001, 0.003, 0.01])
        timeout = rng.choice([0.005, 0.02, 1.0, 1.0, 1.0])
        try:
            got = await pool.call({"op": "tag", "tag": tag, "delay": delay}, timeout=timeout)
        except CallTimeout:
            outcomes["timeout"] += 1
        except AcquireTimeout:
            outcomes["exhausted"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
            raise
        else:
            outcomes["ok"] += 1
            if got != tag:
                wrong.append((tag, got))

    try:
        for start_i in range(0, 10_000, 200):
            tasks = [asyncio.ensure_future(one(i)) for i in range(start_i, start_i + 200)]
            await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
            for task in rng.sample(tasks, 10):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
    assert wrong == []
    assert outcomes["ok"] > 5000, outcomes
    assert sum(outcomes.values()) == 10_000


async def test_a_backend_killed_with_requests_in_flight_fails_them_all(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings(pipeline=32, max_connections=1))
    await pool.start()
    try:
        calls = [
            asyncio.ensure_future(pool.call({"op": "sleep", "seconds": 0.2, "value": i}))
            for i in range(20)
        ]
        await wait_until(lambda: pool.stats()["in_use"] == 20)
        backend.kill()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=5)
        assert results, "no call finished"
        for result in results:
            assert isinstance(result, CallInterrupted | int), result
        assert any(isinstance(r, CallInterrupted) for r in results)
        assert pool.stats()["in_use"] == 0
    finally:
        await pool.close()


async def test_a_stray_reply_turns_pipelining_off(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings(pipeline=8, max_connections=2))
    await pool.start()
    try:
        assert await pool.call({"op": "stream", "count": 3, "value": "s"}) == {
            "seq": 0,
            "value": "s",
        }
        await wait_until(lambda: pool.stats()["violations"] >= 1)
        # From now on each call has a connection of its own: no shifted reply.
        got = await asyncio.gather(*(pool.call({"op": "echo", "value": i}) for i in range(50)))
        assert got == list(range(50))
        assert pool.stats()["addresses"][0]["reuse"] == "never"
    finally:
        await pool.close()


async def test_the_classic_server_learned_capacity_under_pipelined_load(start_backend) -> None:
    backend = await start(start_backend, "classic", args=["--slow-floats"])
    s = settings(pipeline=4, max_connections=4, handshake_timeout=0.2)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        # More calls than one pipe holds: the pool tries a second connection,
        # learns the server serves one, and retires a pipe to let it in.
        results = await asyncio.gather(*(pool.call((i, 0.01)) for i in range(40)))
        assert results == [i + 0.01 for i in range(40)]
        await wait_until(lambda: pool.stats()["stalled_handshakes"] == 0)
        stats = pool.stats()
        assert stats["addresses"][0]["capacity"] == 1
        assert stats["open"] == 1
    finally:
        await pool.close()
    assert backend.alive(), backend.output()
    with backend.connect() as client:
        assert client.call((1, 1)) == 2
