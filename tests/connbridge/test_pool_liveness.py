"""The pool's own view of its backends stays true with no call made.

A backend that dies while the pool holds no connection to it, or one that
needs an authkey the pool does not have, must show in the pool's state
before any caller pays for it; and the checks must not kill the fragile
classic server, however often they run.
"""

from __future__ import annotations

import asyncio

import pytest

from connbridge.errors import BackendUnavailable
from connbridge.pool import Pool
from tests.conftest import TEST_AUTHKEY
from tests.connbridge.test_pool import settings, start, wait_until

KEY = TEST_AUTHKEY


async def test_a_backend_that_dies_with_no_connection_open_is_seen_down(start_backend) -> None:
    backend = await start(start_backend, "listener")
    s = settings(readiness_interval=0.5, idle_timeout=0.3)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        assert await pool.call((1, 2)) == 3
        # The idle connection is closed for its idle timeout: nothing is open.
        await wait_until(lambda: pool.stats()["open"] == 0 and pool.ready)
        backend.kill()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_until(lambda: not pool.ready, timeout=5)
        assert loop.time() - t0 < 0.5 + 1.5  # readiness_interval plus one check
        assert pool.health()["status"] == "down"
        assert pool.health()["addresses"][0]["error_kind"] == "connect"
        restarted = await start(start_backend, "listener", address=backend.address)
        await wait_until(lambda: pool.ready, timeout=40)
        assert await pool.call((2, 3)) == 5
        assert restarted.alive()
    finally:
        await pool.close()
    stats = pool.stats()
    assert stats["closed"].get("liveness", 0) >= 1 or stats["closed"].get("idle", 0) >= 1
    assert stats["opened"] == sum(stats["closed"].values())


async def test_a_backend_killed_with_idle_connections_is_seen_down(start_backend) -> None:
    backend = await start(start_backend, "listener")
    pool = Pool(backend.address, authkey=KEY, settings=settings(readiness_interval=0.5))
    await pool.start()
    try:
        assert await asyncio.gather(*(pool.call((i, 0)) for i in range(4))) == list(range(4))
        await wait_until(lambda: pool.stats()["idle"] >= 1)
        backend.kill()
        # The watch on the idle connections sees the EOF; the next check, the refusal.
        await wait_until(lambda: pool.stats()["open"] == 0, timeout=5)
        await wait_until(lambda: not pool.ready, timeout=5)
        with pytest.raises(BackendUnavailable):
            await pool.call((1, 1))
    finally:
        await pool.close()


async def test_the_classic_server_survives_frequent_liveness_checks(start_backend) -> None:
    backend = await start(start_backend, "classic")
    # A day of checks at the default interval is 8,640; here a few hundred
    # in a few seconds, each a full handshake and a clean close.
    s = settings(readiness_interval=0.005, idle_timeout=0.01)
    pool = Pool(backend.address, authkey=KEY, settings=s)
    await pool.start()
    try:
        await wait_until(lambda: pool.stats()["closed"].get("liveness", 0) >= 300, timeout=30)
        assert pool.ready
        assert await pool.call((40, 2)) == 42
    finally:
        await pool.close()
    assert pool.stats()["errors"] == {}
    assert backend.alive(), backend.output()
    with backend.connect() as client:
        assert client.call((1, 1)) == 2
    assert "Traceback" not in backend.output()


async def test_a_keyed_server_is_recognised_before_any_request(start_backend) -> None:
    backend = await start(start_backend, "listener")  # has an authkey
    pool = Pool(backend.address, authkey=None, settings=settings())
    await pool.start()
    try:
        with pytest.raises(BackendUnavailable, match="requires an authkey") as down:
            await pool.call((1, 2))
        assert down.value.handshake_failed
        assert pool.health()["addresses"][0]["error_kind"] == "auth"
    finally:
        await pool.close()
    # No request reached it: the server only saw a client that never answered.
    assert "unpickl" not in backend.output().lower()
    assert backend.alive()
