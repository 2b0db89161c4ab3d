"""GET /metrics: the fixed metric names, fed by real requests and real pools."""

from __future__ import annotations

import pytest
from gateway_support import backend_config, serve_gateway
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_after_traffic(demo, tmp_path):
    async with serve_gateway({"backends": {"adder": backend_config(demo, tmp_path)}}) as gw:
        for _ in range(3):
            assert (await gw.client.post("/compute", json={"payload": [1, 2]})).status_code == 200
        await gw.client.post("/backends/adder/compute", json={"payload": [1, 2]})
        await gw.client.post(
            "/compute", json={"payload": {"op": "sleep", "seconds": 1}, "timeout": 0.05}
        )
        await gw.client.get("/nothing/here/1")
        await gw.client.get("/nothing/here/2")
        response = await gw.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        got = samples(response.text)

    def value(name: str, **labels: str) -> float:
        return got[name, tuple(sorted(labels.items()))]

    assert value("connbridge_requests_total", route="/compute", backend="adder", status="200") == 3
    assert value("connbridge_requests_total", route="/compute", backend="adder", status="504") == 1
    assert (
        value(
            "connbridge_requests_total",
            route="/backends/{name}/compute",
            backend="adder",
            status="200",
        )
        == 1
    )
    # Unknown paths share one series: a scanner cannot create new ones. They
    # reached no backend: "-" (it was "" before issue 17).
    assert value("connbridge_requests_total", route="<unmatched>", backend="-", status="404") == 2
    assert (
        value("connbridge_request_duration_seconds_count", route="/compute", backend="adder") == 4
    )
    assert value("connbridge_pool_calls_total", backend="adder") == 5
    assert value("connbridge_pool_errors_total", backend="adder", kind="timeout") == 1
    assert ("connbridge_pool_connections", (("backend", "adder"), ("state", "idle"))) in got
    assert ("connbridge_pool_connections", (("backend", "adder"), ("state", "in_use"))) in got
    assert value("connbridge_pool_waiters", backend="adder") == 0


async def test_each_app_has_its_own_registry(demo, tmp_path):
    settings = {"backends": {"adder": backend_config(demo, tmp_path)}}
    async with serve_gateway(settings) as one, serve_gateway(settings) as two:
        await one.client.post("/compute", json={"payload": [1, 2]})
        text = (await two.client.get("/metrics")).text
        assert 'route="/compute"' not in text
        assert "# TYPE connbridge_websocket_connections gauge" in text
        assert one.state.metrics.registry is not two.state.metrics.registry


async def test_the_websocket_gauge_is_exported_before_the_first_socket(demo, tmp_path):
    async with serve_gateway({"backends": {"demo": backend_config(demo, tmp_path)}}) as gw:
        text = (await gw.client.get("/metrics")).text
    assert 'connbridge_websocket_connections{endpoint="/ws"} 0.0' in text
    assert 'connbridge_websocket_connections{endpoint="/ws/session/{backend}"} 0.0' in text
