"""deploy/grafana/connbridge.json queries only metrics and labels the gateway exports.

Every PromQL expression of the dashboard (panel targets and variable
queries) is parsed with a real PromQL parser (promql-parser); the metric
names and label names it uses are then looked up in the ``/metrics`` output
of a real gateway app, served by uvicorn on a loopback port, with a demo
backend in a subprocess and a backend that cannot be reached, after a few
requests so that the labelled series exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import BackendSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "connbridge.json"

#: Grafana's own variables, and the value each stands for when parsing.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
TIMEOUT = 30.0


# -- the dashboard's queries ----------------------------------------------------


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def queries(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every target and every query variable."""
    found = []
    for panel in panels(data):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        # label_values(SELECTOR, LABEL): the selector is PromQL, the label one of its labels.
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text.strip())
        assert match, f"variable {variable['name']}: unsupported query {text!r}"
        selector, label = match.groups()
        found.append((f"variable {variable['name']}", f"count by ({label}) ({selector})"))
    return found


def variables(data: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in data["templating"]["list"]}


@dataclass
class Uses:
    """What one expression needs from the exporter."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def parse(expr: str, defined: set[str]) -> Uses:
    """Parse *expr* as Grafana sends it and collect metric and label names.

    Raises ``AssertionError`` for an undefined variable, and the parser's
    error for anything that is not PromQL.
    """
    for name in re.findall(r"\$\{?(\w+)", expr):
        assert name in defined or name in GRAFANA_INTERVALS, f"undefined variable ${name}"
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(f"${name}", value).replace(f"${{{name}}}", value)
    # What is left are custom variables, used inside matcher strings only.
    ast = promql_parser.parse(expr)
    uses = Uses()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            uses.metrics.add(node.name)
            for matcher in node.matchers.matchers:
                uses.labels.add(matcher.name)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            uses.labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                uses.labels.update(node.modifier.matching.labels)
            uses.labels.update(node.modifier.group_labels)

    promql_parser.walk(ast, visit)
    return uses


def test_the_parser_finds_metrics_and_labels() -> None:
    # The extraction the real test relies on, on an expression of known content.
    uses = parse(
        "histogram_quantile(0.9, sum by (le, backend) "
        '(rate(a_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (instance) group_left sum(b_total)",
        {"job"},
    )
    assert uses.metrics == {"a_bucket", "b_total"}
    assert uses.labels == {"le", "backend", "job", "instance"}
    with pytest.raises(AssertionError, match="undefined variable"):
        parse("rate(a_total[$nope])", set())
    with pytest.raises(Exception):  # noqa: B017 - whatever the parser raises
        parse("sum by (le (rate(a_total[5m]))", set())


def test_dashboard_is_well_formed() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    ids = [panel["id"] for panel in panels(data)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(data):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = {panel["title"] for panel in panels(data)}
    # What the deployment docs promise to show.
    for wanted in (
        "Request rate by route",
        "Errors by status",
        "Latency percentiles",
        "Connections in use by backend",
        "Waiters by backend",
    ):
        assert wanted in titles


def test_latency_uses_histogram_quantile_over_buckets() -> None:
    data = dashboard()
    (panel,) = [p for p in panels(data) if p["title"] == "Latency percentiles"]
    exprs = [target["expr"] for target in panel["targets"]]
    quantiles = sorted(float(re.match(r"histogram_quantile\(([\d.]+),", e)[1]) for e in exprs)  # type: ignore[index]
    assert quantiles == [0.5, 0.9, 0.99]
    for expr in exprs:
        assert "sum by (le)" in expr
        assert "connbridge_request_duration_seconds_bucket" in expr


# -- the gateway's /metrics -------------------------------------------------------


@dataclass
class Exported:
    types: dict[str, str]  # the names on "# TYPE" lines, and their types
    labels: dict[str, set[str]]  # sample name -> label names seen

    def has(self, metric: str) -> bool:
        if metric in self.types:
            return True
        for suffix in HISTOGRAM_SUFFIXES:
            base = metric.removesuffix(suffix)
            if base != metric and self.types.get(base) in ("histogram", "summary"):
                return True
        return False


def exported(text: str) -> Exported:
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return Exported(types, labels)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The app from ``create_app`` under uvicorn on a free loopback port; yields its URL.

    Runs uvicorn's start-up and shut-down steps here rather than
    ``Server.serve()``, which answers a failed start-up with ``sys.exit``.
    """
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        async with asyncio.timeout(TIMEOUT):
            await server.startup()
    except SystemExit:
        raise AssertionError("the app failed to start (see the log above)") from None
    try:
        (sock,) = [s for srv in server.servers for s in srv.sockets]
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        async with asyncio.timeout(TIMEOUT):
            await server.shutdown()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port held bound and never listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def scrape(start_backend: Any, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> str:
    backend = start_backend("demo")
    monkeypatch.setenv("CONNBRIDGE_DEPLOY_TEST_AUTHKEY", os.fsdecode(backend.authkey))
    settings = Settings(
        backends={
            "demo": BackendSettings(
                address=backend.address, authkey_env="CONNBRIDGE_DEPLOY_TEST_AUTHKEY"
            ),
            "down": BackendSettings(
                address=f"127.0.0.1:{closed_port}",
                authkey_env="CONNBRIDGE_DEPLOY_TEST_AUTHKEY",
                connect_timeout=2.0,
            ),
        },
        gateway={"default_backend": "demo"},
    )
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        response = await client.post("/compute", json={"payload": [5, 6]})
        assert response.status_code == 200, response.text
        assert response.json()["result"] == 11
        response = await client.post("/backends/down/compute", json={"payload": [1, 2]})
        assert response.status_code == 503, response.text
        response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text


async def test_every_metric_and_label_the_dashboard_queries_is_exported(
    start_backend: Any, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = exported(await scrape(start_backend, closed_port, monkeypatch))
    # The scrape is not vacuous: the series the dashboard is mostly about exist.
    for name in (
        "connbridge_requests_total",
        "connbridge_request_duration_seconds_bucket",
        "connbridge_pool_connections",
        "connbridge_pool_waiters",
        "connbridge_pool_calls_total",
    ):
        assert name in metrics.labels, f"{name} has no samples"

    data = dashboard()
    defined = variables(data)
    used_metrics: set[str] = set()
    for where, expr in queries(data):
        uses = parse(expr, defined)
        assert uses.metrics, f"{where}: queries no metric: {expr}"
        for metric in uses.metrics:
            assert metric.startswith("connbridge_"), f"{where}: {metric}"
            assert metrics.has(metric), f"{where}: {metric} is not exported by the gateway"
        used_metrics |= uses.metrics
        # Label names: each must exist on one of the expression's metrics,
        # wherever the scrape has samples to tell.
        known = set(TARGET_LABELS)
        sampled = False
        for metric in uses.metrics:
            if metric in metrics.labels:
                known |= metrics.labels[metric]
                sampled = True
        if sampled:
            assert uses.labels <= known, f"{where}: unknown labels {uses.labels - known}"

    # And the dashboard shows every family the gateway exports.
    families = {
        name.removesuffix(suffix)
        for name in used_metrics
        for suffix in ("", *HISTOGRAM_SUFFIXES)
        if name.endswith(suffix) and metrics.types.get(name.removesuffix(suffix))
    }
    # (prometheus-client adds a *_created gauge beside each counter and histogram.)
    assert families == {
        name
        for name in metrics.types
        if name.startswith("connbridge_") and not name.endswith("_created")
    }
