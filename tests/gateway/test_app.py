"""The app factory: middleware (CORS, access log, request id), exports, the OpenAPI document."""

from __future__ import annotations

import importlib
import logging

import pytest
from gateway_support import backend_config, serve_gateway

import gateway.app

pytestmark = pytest.mark.timeout(60)

MODULES = [
    "gateway.app",
    "gateway.auth",
    "gateway.body",
    "gateway.calls",
    "gateway.cli",
    "gateway.context",
    "gateway.deadlines",
    "gateway.deps",
    "gateway.log",
    "gateway.metrics",
    "gateway.openapi",
    "gateway.openapi_file",
    "gateway.problems",
    "gateway.schemas",
    "gateway.settings",
    "gateway.state",
    "gateway.routes.backends",
    "gateway.routes.compute",
    "gateway.routes.health",
    "gateway.routes.metrics",
    "gateway.routes.ws",
    "gateway.server.loop_queue",
    "gateway.server.websocket_protocol",
    "gateway.websocket.calls",
    "gateway.websocket.link",
    "gateway.websocket.session",
]


@pytest.mark.parametrize("name", MODULES)
def test_exports(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(set(module.__all__))
    for export in module.__all__:
        assert hasattr(module, export), export
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and getattr(value, "__module__", None) == name
        and callable(value)
    }
    assert public <= set(module.__all__), public - set(module.__all__)


def test_nothing_is_created_at_import():
    assert not hasattr(gateway.app, "app")


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


async def test_cors_only_when_configured(demo, tmp_path):
    backends = {"demo": backend_config(demo, tmp_path)}
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    async with serve_gateway({"backends": backends}) as gw:
        response = await gw.client.post(
            "/compute", json={"payload": [1, 2]}, headers={"Origin": "https://app.example"}
        )
        assert "access-control-allow-origin" not in response.headers
    settings = {"gateway": {"cors_origins": ["https://app.example"]}, "backends": backends}
    async with serve_gateway(settings) as gw:
        response = await gw.client.options("/compute", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        response = await gw.client.post(
            "/compute", json={"payload": [1, 2]}, headers={"Origin": "https://app.example"}
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
        response = await gw.client.options(
            "/compute", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert response.headers.get("access-control-allow-origin") != "https://evil.example"


async def test_access_log_line(demo, tmp_path, caplog):
    backends = {"demo": backend_config(demo, tmp_path)}
    with caplog.at_level(logging.INFO, logger="connbridge.gateway.access"):
        async with serve_gateway({"backends": backends}) as gw:
            await gw.client.post(
                "/compute?access_token=hunter2",
                json={"payload": [1, 2]},
                headers={"X-Request-ID": "abc-123", "Authorization": "Bearer hunter3"},
            )
    records = [r for r in caplog.records if r.name == "connbridge.gateway.access"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert line.startswith('abc-123 "POST /compute" 200 ')
    assert line.endswith("backend=demo")
    assert "hunter" not in line
    fields = records[0].access
    assert fields["request_id"] == "abc-123"
    assert fields["status"] == 200
    assert fields["backend"] == "demo"
    assert fields["route"] == "/compute"


async def test_openapi_describes_bodies_and_problems(demo, tmp_path):
    async with serve_gateway({"backends": {"demo": backend_config(demo, tmp_path)}}) as gw:
        document = (await gw.client.get("/openapi.json")).json()
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    compute = paths["/compute"]["post"]
    assert compute["requestBody"]["required"] is True
    assert compute["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ComputeResponse"
    }
    for status in ("400", "404", "413", "415", "422", "502", "503", "504"):
        content = compute["responses"][status]["content"]
        assert content == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    batch = paths["/compute/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"] == {"$ref": "#/components/schemas/BatchRequest"}
    assert set(schemas["ComputeRequest"]["properties"]) == {
        "backend",
        "payload",
        "timeout",
        "result_format",
    }
    assert schemas["ComputeRequest"]["required"] == ["payload"]
    assert "/backends/demo/compute" in paths
    assert {"/backends", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_request_ids_are_random_and_unique_across_batches() -> None:
    import itertools

    from gateway.context import _random_ids

    ids = [_random_ids.next_id() for _ in range(1000)]  # several batches of 256
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    # Not a counter: consecutive ids share no long common prefix as a rule.
    assert sum(a[:8] == b[:8] for a, b in itertools.pairwise(ids)) < 5
    _random_ids.forget()  # what a forked child does: a fresh draw
    assert _random_ids.next_id() not in ids
