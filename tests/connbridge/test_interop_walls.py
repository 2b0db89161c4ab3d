"""Servers that speak the protocol a little differently, and addresses the event loop mishandles.

Each is a wall a user met in the wild: FIPS-patched Pythons answer the legacy
handshake with HMAC-SHA256, Python 2 servers cannot read pickle protocol 4,
and uvloop cannot connect to abstract Unix addresses by name.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from connbridge.errors import BackendUnavailable, CallInterrupted
from connbridge.pool import Pool
from tests.conftest import TEST_AUTHKEY
from tests.connbridge.test_pool import settings, start

KEY = TEST_AUTHKEY
SERVERS = Path(__file__).parents[1] / "servers"
PYTHON_311 = next(Path.home().glob(".pyenv/versions/3.11.*/bin/python3"), None)


@pytest.mark.skipif(PYTHON_311 is None, reason="needs a pyenv Python 3.11 for the FIPS variant")
async def test_a_fips_patched_server_needs_legacy_digest_sha256(start_backend) -> None:
    backend = await start(start_backend, str(SERVERS / "fips_listener.py"), python=str(PYTHON_311))
    pool = Pool(backend.address, authkey=KEY, settings=settings(legacy_digest="sha256"))
    await pool.start()
    try:
        assert await asyncio.gather(*(pool.call((i, 1)) for i in range(20))) == [
            i + 1 for i in range(20)
        ]
        assert pool.stats()["errors"] == {}
    finally:
        await pool.close()
    # Without the setting the same server is an authentication failure, named as such.
    pool = Pool(backend.address, authkey=KEY, settings=settings())
    await pool.start()
    try:
        with pytest.raises(BackendUnavailable, match="auth") as down:
            await pool.call((1, 1))
        assert down.value.handshake_failed
    finally:
        await pool.close()
    assert backend.alive()


def _python2() -> Path | None:
    return next(Path.home().glob(".pyenv/versions/2.7.*/bin/python2.7"), None)


@pytest.mark.skipif(_python2() is None, reason="needs a pyenv Python 2.7")
async def test_a_python2_server_that_drops_protocol_4_gets_a_hint(start_backend) -> None:
    backend = await start(start_backend, "classic", python=str(_python2()))
    pool = Pool(backend.address, authkey=KEY, settings=settings())  # pickle_protocol = 4
    await pool.start()
    try:
        with pytest.raises(CallInterrupted, match="pickle_protocol = 2"):
            await pool.call((1, 2))
    finally:
        await pool.close()
    backend.stop()
    # With the hint followed, the same kind of server answers.
    backend = await start(start_backend, "classic", python=str(_python2()))
    pool = Pool(backend.address, authkey=KEY, settings=settings(pickle_protocol=2))
    await pool.start()
    try:
        assert await pool.call((1, 2)) == 3
    finally:
        await pool.close()
    assert backend.alive()


def test_an_abstract_unix_address_works_under_uvloop(start_backend) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop comes with uvicorn[standard]")
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract Unix addresses exist on Linux only")
    backend = start_backend("listener", address="unix:@")

    async def main() -> object:
        pool = Pool(backend.address, authkey=KEY, settings=settings())
        await pool.start()
        try:
            return await pool.call((20, 22))
        finally:
            await pool.close()

    assert uvloop.run(main()) == 42
