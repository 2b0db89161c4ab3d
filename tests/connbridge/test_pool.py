"""The pool against real backends in subprocesses.

The rule under test throughout: a reply never reaches the wrong caller, and
the fragile classic server (it dies on any error but EOF) stays alive.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading

import pytest

from connbridge.errors import (
    AcquireTimeout,
    BackendUnavailable,
    CallInterrupted,
    CallTimeout,
    PoolClosed,
    PoolOverloaded,
)
from connbridge.pool import Pool, PoolSettings
from tests.conftest import TEST_AUTHKEY

KEY = TEST_AUTHKEY


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02) -> None:
    """Poll a condition with a deadline (no sleep-and-hope)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def settings(**overrides) -> PoolSettings:
    base = {"connect_timeout": 2.0, "handshake_timeout": 0.5, "close_grace": 5.0}
    base.update(overrides)
    return PoolSettings(**base)


async def start(start_backend, *args, **kw):
    return await asyncio.to_thread(start_backend, *args, **kw)


async def test_sequential_server_under_100_concurrent_calls(start_backend) -> None:
    backend = await start(start_backend, "listener", mode="sequential")
    pool = Pool(backend.address, authkey=KEY)  # default settings
    await pool.start()
    try:
        results = await asyncio.gather(*(pool.call((i, 1000)) for i in range(100)))
        assert results == [i + 1000 for i in range(100)]
        stats = pool.stats()
        assert stats["open"] == 1
        assert stats["errors"] == {}
    finally:
        await pool.close()
    assert backend.alive()


async def test_pool_learns_a_one_connection_server(start_backend) -> None:
    backend = await start(start_backend, "listener", mode="sequential")
    pool = Pool(backend.address, authkey=KEY, settings=settings(handshake_timeout=0.2))
    await pool.start()
    try:
        # Enough concurrent slow calls that the pool wants a second connection.
        calls = [pool.call({"op": "sleep", "seconds": 0.1, "value": i}) for i in range(6)]
        assert await asyncio.gather(*calls) == list(range(6))
        await wait_until(lambda: pool.stats()["addresses"][0]["capacity"] == 1)
        address = pool.stats()["addresses"][0]
        assert address["state"] == "up"
        # The silent handshake was not abandoned: a working connection was
        # retired when it came back idle, the server reached the silent one
        # and it joined. The pool ends with the learned number, none stalled.
        await wait_until(lambda: pool.stats()["stalled_handshakes"] == 0)
        stats = pool.stats()
        assert stats["open"] == 1
        assert stats["closed"].get("make_room") == 1
        assert stats["addresses"][0]["capacity"] == 1  # still learned after it joined
        assert await pool.call({"op": "echo", "value": "after"}) == "after"
    finally:
        await pool.close()
    assert pool.stats()["stalled_handshakes"] == 0
    assert backend.alive()


async def test_classic_server_survives_load_timeouts_cancellations_and_reopen(
    start_backend,
) -> None:
    backend = await start(start_backend, "classic", args=["--slow-floats"])
    s = settings(handshake_timeout=0.3, drain_timeout=5.0)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        # 100 concurrent calls
        assert await asyncio.gather(*(pool.call((i, 0)) for i in range(100))) == list(range(100))
        # calls that time out; the late reply must never reach the next caller
        for i in range(3):
            with pytest.raises(CallTimeout):
                await pool.call((1000 + i, 0.3), timeout=0.05)
            assert await pool.call((i, 0), timeout=5) == i
        # callers cancelled mid-call
        for i in range(3):
            task = asyncio.ensure_future(pool.call((2000 + i, 0.2)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await pool.call((i, 7), timeout=5) == i + 7
        assert backend.alive()
    finally:
        await pool.close()
    # closed and reopened
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        assert await pool.call((40, 2)) == 42
    finally:
        await pool.close()
    assert backend.alive(), backend.output()
    assert "Traceback" not in backend.output()


async def test_late_reply_is_drained_then_the_connection_reused(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_connections=1))
    await pool.start()
    try:
        with pytest.raises(CallTimeout):
            await pool.call({"op": "tag", "tag": "A", "delay": 0.3}, timeout=0.05)
        assert pool.stats()["draining"] == 1
        # A drain does not take the call slot (max_draining): the next caller
        # gets a connection of its own at once, and its own reply.
        assert await pool.call({"op": "tag", "tag": "B", "delay": 0}) == "B"
        # (after the first reply on an address, a connection settles briefly)
        await wait_until(lambda: pool.stats()["idle"] == 2)
        stats = pool.stats()
        assert stats["closed"] == {} and stats["open"] == 2  # drained and kept, not closed
        # Both are reused: each caller still gets its own reply.
        tags = await asyncio.gather(
            *(pool.call({"op": "tag", "tag": t, "delay": 0.05}) for t in "CD")
        )
        assert tags == ["C", "D"] and pool.stats()["open"] == 2
    finally:
        await pool.close()


async def test_a_drain_that_times_out_closes_the_connection(start_backend) -> None:
    backend = await start(start_backend, "listener")
    s = settings(max_connections=1, drain_timeout=0.2)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        with pytest.raises(CallTimeout):
            await pool.call({"op": "tag", "tag": "slow", "delay": 2}, timeout=0.05)
        assert await pool.call({"op": "tag", "tag": "next", "delay": 0}, timeout=5) == "next"
        await wait_until(lambda: pool.stats()["closed"].get("drain_failed") == 1)
        assert pool.stats()["draining"] == 0
    finally:
        await pool.close()


async def test_backend_killed_mid_call_then_restarted(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        assert await pool.call((1, 1)) == 2
        call = asyncio.ensure_future(pool.call({"op": "sleep", "seconds": 10}))
        await wait_until(lambda: pool.stats()["calls"] == 2 and pool.stats()["in_use"] == 1)
        backend.kill()
        with pytest.raises(CallInterrupted, match="may or may not"):
            async with asyncio.timeout(3):
                await call
        # Every address is down: callers are told at once.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(BackendUnavailable) as down:
            await pool.call((1, 1))
        assert loop.time() - t0 < 1.0
        assert down.value.handshake_failed is False  # down, not misconfigured
        assert pool.health()["addresses"][0]["error_kind"] == "connect"
        # Restart on the same address; the probe brings it back.
        restarted = await start(start_backend, "listener", address=backend.address)
        await wait_until(lambda: pool.ready, timeout=40)
        assert await pool.call((2, 3)) == 5
        assert restarted.alive()
    finally:
        await pool.close()


async def test_idle_connections_of_a_restarted_backend_cost_no_failed_call(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        await asyncio.gather(*(pool.call({"op": "sleep", "seconds": 0.05}) for _ in range(4)))
        await wait_until(lambda: pool.stats()["idle"] >= 2 and pool.stats()["in_use"] == 0)
        backend.stop()
        restarted = await start(start_backend, "listener", address=backend.address)
        await wait_until(
            lambda: all(h.conn.peer_closed for t in pool._replicas.values() for h in t.idle)
        )
        assert await pool.call((3, 4)) == 7  # stale idle ones dropped at checkout
        assert pool.stats()["closed"].get("idle_eof", 0) >= 1
        assert restarted.alive()
    finally:
        await pool.close()


async def test_busy_one_connection_server_slow_handshake_is_not_abandoned(start_backend) -> None:
    backend = await start(start_backend, "classic")
    other = await asyncio.to_thread(backend.connect)  # someone else holds the only slot
    pool = Pool(backend.address, authkey=KEY, settings=settings(handshake_timeout=0.2))
    await pool.start()  # does not fail
    try:
        assert pool.health()["status"] == "down"
        with pytest.raises(BackendUnavailable, match="no authkey, or it serves one connection"):
            await pool.call((1, 2))
        # The other client leaves: the server accepts our waiting connection.
        await asyncio.to_thread(other.close)
        await wait_until(lambda: pool.ready)
        assert await pool.call((1, 2)) == 3
    finally:
        await pool.close()
    assert backend.alive(), backend.output()


async def test_slow_handshake_within_the_timeout_just_works(start_backend) -> None:
    backend = await start(start_backend, "classic")
    other = await asyncio.to_thread(backend.connect)
    pool = Pool(backend.address, authkey=KEY, settings=settings(handshake_timeout=10))
    starting = asyncio.ensure_future(pool.start())
    await asyncio.sleep(0.3)
    assert not starting.done()
    await asyncio.to_thread(other.close)
    await starting
    try:
        assert await pool.call((20, 22)) == 42
        assert pool.stats()["errors"] == {}
    finally:
        await pool.close()


async def test_wrong_key_backs_off_instead_of_hammering(start_backend) -> None:
    backend = await start(start_backend, "listener")
    bad_key = b"not-the-key-7f3a"
    pool = Pool(backend.address, authkey=bad_key, settings=settings())
    await pool.start()
    try:
        for _ in range(20):
            with pytest.raises(BackendUnavailable, match="auth") as info:
                await pool.call((1, 2))
            assert bad_key.decode() not in str(info.value)
            assert info.value.handshake_failed is True
        address = pool.stats()["addresses"][0]
        assert address["errors"] == {"auth": 1}  # one attempt, not twenty
        assert address["retry_in_s"] > 3
        assert bad_key.decode() not in str(pool.stats())
        assert TEST_AUTHKEY.decode("latin-1") not in str(pool.stats())
    finally:
        await pool.close()


async def test_two_replicas_share_calls_and_survive_one_down(start_backend) -> None:
    a = await start(start_backend, "listener")
    b = await start(start_backend, "listener")
    pool = Pool([a.address, b.address], authkey=KEY, settings=settings())
    await pool.start()
    try:
        # Concurrent slow calls spread over both replicas (fewest in flight first).
        await asyncio.gather(*(pool.call({"op": "sleep", "seconds": 0.05}) for _ in range(8)))
        per = {t["address"]: t["calls"] for t in pool.stats()["addresses"]}
        assert all(n > 0 for n in per.values()), per  # both replicas took calls
        b.kill()
        # Once the pool has seen the replica's connections close, no call fails.
        b_target = next(t for t in pool._replicas.values() if str(t.address) == b.address)
        await wait_until(lambda: all(h.conn.peer_closed for h in b_target.idle))
        results = await asyncio.gather(*(pool.call({"op": "pid"}) for _ in range(20)))
        assert set(results) == {a.pid}
        states = {t["address"]: t["state"] for t in pool.stats()["addresses"]}
        assert states[a.address] == "up"
    finally:
        await pool.close()


async def test_idle_and_old_connections_are_closed_by_reason(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(idle_timeout=0.2))
    await pool.start()
    try:
        assert await pool.call((1, 1)) == 2
        await wait_until(lambda: pool.stats()["closed"].get("idle") == 1)
        assert pool.stats()["open"] == 0
    finally:
        await pool.close()
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_lifetime=0.2))
    await pool.start()
    try:
        # Kept busy, so never idle long: only its age retires it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while pool.stats()["closed"].get("lifetime") != 1:
            assert loop.time() < deadline, pool.stats()
            assert await pool.call((2, 2)) == 4
            await asyncio.sleep(0.02)
        assert pool.stats()["closed"].get("idle") is None
    finally:
        await pool.close()
    assert backend.alive()


async def test_max_waiters_overload_is_immediate(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_connections=1, max_waiters=2))
    await pool.start()
    try:
        busy = [asyncio.ensure_future(pool.call({"op": "sleep", "seconds": 0.3})) for _ in range(3)]
        await wait_until(lambda: pool.stats()["waiters"] == 2)
        with pytest.raises(PoolOverloaded):
            await pool.call((1, 1))
        await asyncio.gather(*busy)
    finally:
        await pool.close()


async def test_acquire_timeout(start_backend) -> None:
    backend = await start(start_backend, "listener")
    s = settings(max_connections=1, acquire_timeout=0.1)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        busy = asyncio.ensure_future(pool.call({"op": "sleep", "seconds": 0.5}))
        await wait_until(lambda: pool.stats()["in_use"] == 1)
        with pytest.raises(AcquireTimeout):
            await pool.call((1, 1))
        await busy
        assert pool.stats()["waits"] >= 1
    finally:
        await pool.close()


async def test_close_lets_calls_in_flight_finish(start_backend) -> None:
    backend = await start(start_backend, "classic", args=["--slow-floats"])
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    call = asyncio.ensure_future(pool.call((1, 0.3)))
    await wait_until(lambda: pool.stats()["in_use"] == 1)
    await pool.close(grace=5)
    assert await call == 1.3
    with pytest.raises(PoolClosed):
        await pool.call((1, 1))
    assert pool.stats()["open"] == 0
    assert backend.alive(), backend.output()


async def test_connection_block_that_raises_discards_the_connection(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_connections=1))
    await pool.start()
    try:
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.send({"op": "tag", "tag": "X", "delay": 0.1})
                1 / 0  # noqa: B018
        assert pool.stats()["closed"] == {"error": 1}
        async with pool.connection() as conn:
            await conn.send({"op": "tag", "tag": "Y", "delay": 0})
            assert await conn.recv() == "Y"
    finally:
        await pool.close()


async def test_dedicated_connections_do_not_take_pool_slots(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(max_connections=1))
    await pool.start()
    try:
        sessions = [await pool.open_dedicated() for _ in range(3)]
        assert await pool.call((2, 2)) == 4
        assert pool.stats()["open"] == 1
        for conn in sessions:
            await conn.send({"op": "pid"})
            assert await conn.recv() == backend.pid
            await conn.close()
    finally:
        await pool.close()


async def test_host_names_are_resolved(start_backend) -> None:
    backend = await start(start_backend, "listener")
    port = backend.address.rsplit(":", 1)[1]
    pool = Pool(f"localhost:{port}", authkey=KEY, settings=settings())
    await pool.start()
    try:
        assert await pool.call((1, 2)) == 3
        resolved = {t["address"] for t in pool.stats()["addresses"]}
        expected = {
            f"{info[4][0]}:{port}" if ":" not in info[4][0] else f"[{info[4][0]}]:{port}"
            for info in socket.getaddrinfo("localhost", int(port), type=socket.SOCK_STREAM)
        }
        assert resolved == expected
        assert all(t["resolved_from"] == f"localhost:{port}" for t in pool.stats()["addresses"])
    finally:
        await pool.close()


@pytest.mark.slow
async def test_soak_no_reply_ever_reaches_the_wrong_caller(start_backend) -> None:
    backend = await start(start_backend, "listener")
    s = settings(max_connections=8, drain_timeout=2.0, max_waiters=10_000, acquire_timeout=5)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    rng = random.Random(1234)
    loop = asyncio.get_running_loop()
    wrong: list[tuple[str, object]] = []
    late: list[float] = []
    outcomes = {"ok": 0, "timeout": 0, "exhausted": 0, "cancelled": 0, "other": 0}
    slack = 0.25
    lock = threading.Lock()

    async def one(i: int) -> None:
        tag = f"call-{i}"
        delay = rng.choice([0, 0, 0, 0.001, 0.003, 0.01, 0.03])
        timeout = rng.choice([0.005, 0.02, 0.05, 1.0, 1.0, 1.0])
        t0 = loop.time()
        try:
            result = await pool.call({"op": "tag", "tag": tag, "delay": delay}, timeout=timeout)
        except CallTimeout:
            outcomes["timeout"] += 1
        except AcquireTimeout:
            outcomes["exhausted"] += 1  # never sent: no connection within the timeout
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
            raise
        except Exception:
            outcomes["other"] += 1
            raise
        else:
            outcomes["ok"] += 1
            if result != tag:
                with lock:
                    wrong.append((tag, result))
        finally:
            if loop.time() - t0 > timeout + slack:
                late.append(loop.time() - t0 - timeout)

    total = 10_000
    batch = 200
    try:
        for start_i in range(0, total, batch):
            tasks = [asyncio.ensure_future(one(i)) for i in range(start_i, start_i + batch)]
            victims = rng.sample(tasks, 10)
            await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
            for task in victims:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
    assert wrong == []
    assert late == [], f"{len(late)} calls overran their timeout by up to {max(late):.3f} s"
    assert outcomes["other"] == 0, outcomes
    assert sum(outcomes.values()) == total
    assert outcomes["ok"] > total // 2 and outcomes["timeout"] > 0, outcomes
    assert backend.alive()
