"""Pool.stream: one request, every reply read as it comes, and an end by the caller's rule."""

from __future__ import annotations

import asyncio

import pytest

from connbridge.errors import CallTimeout, ConnectionClosed, FrameTooLarge, StreamIdle
from connbridge.pool import Pool
from tests.conftest import TEST_AUTHKEY
from tests.connbridge.test_pool import settings, start, wait_until

KEY = TEST_AUTHKEY


def stream_op(count: int, value: object = "v", delay: float = 0.0) -> dict[str, object]:
    return {"op": "stream", "count": count, "value": value, "delay": delay}


async def test_a_counted_stream_gives_its_connection_back(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_connections=1))
    await pool.start()
    try:
        async with pool.stream(stream_op(5)) as replies:
            got = [await replies.next() for _ in range(5)]
            replies.finish()
        assert got == [{"seq": i, "value": "v"} for i in range(5)]
        assert await pool.call({"op": "echo", "value": "after"}) == "after"
        stats = pool.stats()
        assert stats["open"] == 1 and stats["closed"] == {}
        assert stats["violations"] == 0
    finally:
        await pool.close()


async def test_a_stream_on_a_many_backend_reuses_only_after_a_provable_end(start_backend) -> None:
    backend = await start(start_backend, "demo")
    s = settings(max_connections=1, replies="many")
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        async with pool.stream(stream_op(3)) as replies:
            assert [await replies.next() for _ in range(3)][-1] == {"seq": 2, "value": "v"}
            replies.finish()
        assert pool.stats()["open"] == 1  # kept: the end was provable
        # /compute-style calls on it stay single-use: the extra replies are dropped, counted.
        assert await pool.call(stream_op(4)) == {"seq": 0, "value": "v"}
        await wait_until(lambda: pool.stats()["discarded_replies"] == 3)
        assert pool.stats()["closed"].get("single_use") == 1
    finally:
        await pool.close()


async def test_a_silent_gap_ends_the_stream_and_closes_the_connection(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings(drain_timeout=5))
    await pool.start()
    try:
        async with pool.stream(stream_op(3, delay=0.5)) as replies:
            assert await replies.next(idle_timeout=2) == {"seq": 0, "value": "v"}
            with pytest.raises(StreamIdle):
                await replies.next(idle_timeout=0.1)
        await wait_until(lambda: pool.stats()["in_use"] == 0 and pool.stats()["open"] == 0)
        assert pool.stats()["closed"] == {"stream_end": 1}
        assert await pool.call({"op": "echo", "value": 1}) == 1
        # The late replies were read and dropped while the close waited for the server.
        await wait_until(lambda: pool.stats()["discarded_replies"] == 2)
    finally:
        await pool.close()
    assert backend.alive()


async def test_the_overall_timeout_and_a_closing_backend_end_a_stream(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        async with pool.stream(stream_op(3, delay=1.0), timeout=0.3) as replies:
            await replies.next()
            with pytest.raises(CallTimeout):
                await replies.next()
        async with pool.stream({"op": "close"}) as replies:
            with pytest.raises(ConnectionClosed):
                await replies.next()
        await wait_until(lambda: pool.stats()["in_use"] == 0)
        assert pool.stats()["closed"].get("stream_end") == 2
    finally:
        await pool.close()


async def test_a_reply_over_the_streams_limit_is_refused_from_its_header(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        with pytest.raises(FrameTooLarge):
            async with pool.stream(stream_op(2, value="x" * 5000), max_reply_bytes=1000) as r:
                await r.next()
        assert pool.stats()["closed"].get("stream_error") == 1
        # Other calls keep the pool's own limit.
        assert await pool.call({"op": "echo", "value": "y" * 5000}) == "y" * 5000
    finally:
        await pool.close()


async def test_a_slow_reader_holds_back_the_backend(start_backend) -> None:
    backend = await start(start_backend, "demo")
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        async with pool.stream(stream_op(2000, value="z" * 10_000), timeout=60) as replies:
            assert (await replies.next())["seq"] == 0
            await asyncio.sleep(0.5)  # the backend has long had time to send 20 MB
            # What the pool buffered is bounded by the read high-water mark.
            assert replies._conn._stream.decoder.buffered < 1024 * 1024
            for i in range(1, 2000):
                assert (await replies.next())["seq"] == i
            replies.finish()
    finally:
        await pool.close()
