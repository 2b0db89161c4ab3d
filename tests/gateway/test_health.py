"""GET /healthz and GET /readyz, from the pools' own state."""

from __future__ import annotations

import asyncio

import pytest
from gateway_support import PROBLEM, backend_config, problem_type, serve_gateway, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


async def test_ready_when_every_backend_is(demo, tmp_path):
    async with serve_gateway({"backends": {"demo": backend_config(demo, tmp_path)}}) as gw:
        assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
        response = await gw.client.get("/readyz")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready"
        assert body["backends"]["demo"]["ready"] is True
        assert body["backends"]["demo"]["status"] == "up"


async def test_not_ready_names_the_backend(demo, tmp_path):
    settings = {
        "backends": {
            "demo": backend_config(demo, tmp_path),
            "gone": {"address": f"unix:{tmp_path}/nothing.sock"},
        }
    }
    async with serve_gateway(settings) as gw:
        response = await gw.client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["type"] == problem_type("not-ready")
        assert "gone" in body["detail"]
        assert body["backends"]["demo"]["ready"] is True
        assert body["backends"]["gone"]["ready"] is False
        assert body["backends"]["gone"]["status"] == "down"
        # Liveness does not depend on the backends.
        assert (await gw.client.get("/healthz")).status_code == 200


async def test_readiness_recovers_when_the_backend_comes(start_backend, tmp_path):
    # A backend that is down at start-up, then appears: /readyz follows the pool.
    backend = start_backend("listener", mode="threaded", address="unix:")
    path = backend.address.removeprefix("unix:")
    backend.stop()
    settings = {"backends": {"late": backend_config(backend, tmp_path, connect_timeout=1.0)}}
    async with serve_gateway(settings) as gw:
        assert (await gw.client.get("/readyz")).status_code == 503
        again = start_backend("listener", mode="threaded", address=f"unix:{path}")
        assert again.address == backend.address

        async def ready() -> bool:
            return (await gw.client.get("/readyz")).status_code == 200

        # The pool probes the address with backoff; /readyz follows its state.
        await wait_until(ready, timeout=40, what="readiness after the backend came up")
        assert (await gw.client.post("/compute", json={"payload": [1, 2]})).json()["result"] == 3


async def test_readiness_turns_503_when_a_backend_dies_with_no_call_made(start_backend, tmp_path):
    backend = start_backend("listener", mode="threaded")
    settings = {
        "gateway": {"readiness_timeout": 1.0},
        "backends": {"b": backend_config(backend, tmp_path, readiness_interval=1.0)},
    }
    async with serve_gateway(settings) as gw:
        assert (await gw.client.get("/readyz")).status_code == 200
        backend.kill()
        loop = asyncio.get_running_loop()
        died = loop.time()

        async def not_ready() -> bool:
            return (await gw.client.get("/readyz")).status_code == 503

        await wait_until(not_ready, what="/readyz turns 503", timeout=10)
        # readiness_interval + readiness_timeout, plus one housekeeping tick
        assert loop.time() - died < 1.0 + 1.0 + 1.0
        body = (await gw.client.get("/readyz")).json()
        assert body["backends"]["b"]["status"] == "down"
        again = start_backend("listener", mode="threaded", address=backend.address)

        async def ready() -> bool:
            return (await gw.client.get("/readyz")).status_code == 200

        await wait_until(ready, what="/readyz back to 200", timeout=40)
        assert again.alive()


async def test_a_keyed_listener_without_an_authkey_configured_is_named(start_backend, tmp_path):
    backend = start_backend("listener", mode="threaded")  # it has an authkey
    config = backend_config(backend, tmp_path)
    for key in ("authkey", "authkey_env", "authkey_file"):
        config.pop(key, None)
    async with serve_gateway({"backends": {"b": config}}) as gw:
        response = await gw.client.post("/compute", json={"payload": [1, 2]})
        assert response.status_code == 503
        body = response.json()
        assert body["type"] == problem_type("backend-authentication-failed")
        assert "requires an authkey" in body["detail"]
        assert (await gw.client.get("/readyz")).status_code == 503
    assert backend.alive()
