"""gateway/tracing.py: traces continued from the caller's ``traceparent``, exported over OTLP.

The gateway runs as a real process (``connbridge-gateway --demo``) with the
standard ``OTEL_*`` variables, curl sends the requests, and the spans are
received by a real OTLP/HTTP receiver started here on a free loopback port,
which decodes the protobuf requests the exporter posts (not the SDK's
in-memory exporter: what is checked is what goes over the wire).
"""

from __future__ import annotations

import gzip
import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from websockets.asyncio.client import connect

from gateway.tracing import UNTRACED_PATHS, tracing_wanted
from tests.gateway.test_cli import child_env, gateway_process


class OTLPReceiver:
    """An OTLP/HTTP traces endpoint: ``POST /v1/traces``, protobuf, optionally gzip."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.requests = 0
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or not self.headers.get("Content-Type", "").startswith(
                    "application/x-protobuf"
                ):
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                received = []
                for resource_spans in request.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        received += [(resource, span) for span in scope_spans.spans]
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                with receiver.changed:
                    receiver.spans += received
                    receiver.requests += 1
                    receiver.changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[dict[str, Any], Span]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.spans) >= count, timeout):
                raise AssertionError(f"{len(self.spans)} spans received, expected {count}")
            return list(self.spans)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    running = OTLPReceiver()
    running.thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
        running.thread.join(10)


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "30", *args, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = getattr(value, value.WhichOneof("value"))
    return out


def otel_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    return child_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="connbridge-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
        **extra,
    )


async def test_traceparent_from_curl_is_the_parent_of_the_server_span(receiver):
    trace_id = secrets.token_hex(16)
    parent_id = secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"
    args = ("--demo", "--port", "0", "--log-format", "json")
    async with gateway_process(*args, env=otel_env(receiver)) as gateway:
        url = await gateway.listening()
        # Probes and scrapes get no span, whatever they carry.
        for path in ("/healthz", "/readyz", "/metrics"):
            curl(url + path, "-H", f"traceparent: {traceparent}")
        answer = curl(
            url + "/compute",
            *("-H", f"traceparent: {traceparent}", "-H", "tracestate: rojo=00f067aa0ba902b7"),
            *("-H", "Content-Type: application/json", "--data", '{"payload": [5, 6]}'),
        )
        assert json.loads(answer.stdout)["result"] == 11
        # A failed call: its span says what failed.
        curl(
            url + "/compute",
            *("-H", f"traceparent: {traceparent}", "-H", "Content-Type: application/json"),
            *("--data", '{"payload": {"op": "raise", "type": "ValueError", "args": ["no"]}}'),
        )
        # A request without a traceparent starts a trace of its own.
        curl(url + "/backends")
        gateway.proc.send_signal(signal.SIGTERM)  # the provider exports what is left
        assert await gateway.wait() == 0, gateway.output()

    spans = receiver.wait_for(5)
    assert len(spans) == 5, [span.name for _, span in spans]
    assert {resource["service.name"] for resource, _ in spans} == {"connbridge-under-test"}
    by_kind: dict[int, list[Span]] = {}
    for _, span in spans:
        by_kind.setdefault(span.kind, []).append(span)
    servers = by_kind[Span.SPAN_KIND_SERVER]
    clients = by_kind[Span.SPAN_KIND_CLIENT]
    assert sorted(s.name for s in servers) == ["GET /backends", "POST /compute", "POST /compute"]
    names = [span.name for _, span in spans]
    assert not [name for name in names if name.split()[-1] in UNTRACED_PATHS]

    # The chain: curl's parent -> the gateway's SERVER span -> the CLIENT span of the call.
    computes = [s for s in servers if s.name == "POST /compute"]
    for server in computes:
        assert server.trace_id.hex() == trace_id
        assert server.parent_span_id.hex() == parent_id
        assert attributes(server)["http.route"] == "/compute"
    statuses = sorted(attributes(s)["http.response.status_code"] for s in computes)
    assert statuses == [200, 502]  # the exception object the backend sent back: 502
    # tracestate continued too (only the first request sent one).
    by_status = {attributes(s)["http.response.status_code"]: s for s in computes}
    assert by_status[200].trace_state == "rojo=00f067aa0ba902b7"
    assert by_status[502].trace_state == ""
    assert len(clients) == 2
    by_parent = {s.parent_span_id: s for s in clients}
    assert set(by_parent) == {s.span_id for s in computes}
    for client in clients:
        assert client.trace_id.hex() == trace_id
        assert client.name == "call demo"
        assert attributes(client)["connbridge.backend"] == "demo"
        assert attributes(client)["server.address"].startswith("unix:")
        # The phase: the connection wait ends with an event, inside the call's span.
        (event,) = [e for e in client.events if e.name == "connection acquired"]
        assert client.start_time_unix_nano <= event.time_unix_nano <= client.end_time_unix_nano
    outcomes = sorted(attributes(s)["connbridge.outcome"] for s in clients)
    assert outcomes == ["backend_raised", "ok"]
    backends = [s for s in servers if s.name == "GET /backends"]
    assert backends[0].trace_id.hex() != trace_id
    assert not backends[0].parent_span_id

    # The JSON access line of each traced request carries the ids of its SERVER span.
    lines = [json.loads(line) for line in gateway.lines if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "connbridge.gateway.access"]
    compute_lines = [line for line in access if line["path"] == "/compute"]
    assert len(compute_lines) == 2
    assert {line["trace_id"] for line in compute_lines} == {trace_id}
    assert {line["span_id"] for line in compute_lines} == {s.span_id.hex() for s in computes}
    for line in access:
        if line["path"] in ("/healthz", "/readyz", "/metrics"):
            assert "trace_id" not in line
    (startup,) = [line for line in lines if "connbridge gateway listening" in line["message"]]
    assert "trace_id" not in startup


async def test_ws_calls_are_children_of_the_socket_span(receiver):
    trace_id = secrets.token_hex(16)
    parent_id = secrets.token_hex(8)
    async with gateway_process("--demo", "--port", "0", env=otel_env(receiver)) as gateway:
        url = await gateway.listening()
        async with connect(
            url.replace("http", "ws", 1) + "/ws",
            additional_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        ) as socket:
            for ident in range(3):
                await socket.send(json.dumps({"id": ident, "payload": [ident, 1]}))
            replies = [json.loads(await socket.recv()) for _ in range(3)]
            assert sorted(r["result"] for r in replies) == [1, 2, 3]
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0, gateway.output()
    spans = [span for _, span in receiver.wait_for(4)]
    assert len(spans) == 4
    (server,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert server.name == "GET /ws"
    assert server.parent_span_id.hex() == parent_id
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(clients) == 3
    assert {s.parent_span_id for s in clients} == {server.span_id}
    assert {s.trace_id.hex() for s in spans} == {trace_id}


async def test_a_collector_that_is_down_costs_no_request_and_no_clean_exit():
    # A closed port: the exporter fails (and says so); the gateway serves and stops.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
        env = child_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        async with gateway_process("--demo", "--port", "0", env=env) as gateway:
            url = await gateway.listening()
            for _ in range(3):
                answer = curl(
                    url + "/compute",
                    *("-H", "Content-Type: application/json", "--data", '{"payload": [1, 2]}'),
                )
                assert json.loads(answer.stdout)["result"] == 3
            gateway.proc.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0, gateway.output()
    output = gateway.output()
    # The exporter says the export failed, in a log line, not a traceback.
    assert " opentelemetry.exporter.otlp.proto.http.trace_exporter: " in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # naming a service asks for no export
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),  # only OTLP: said in a warning
    ],
)
def test_which_environment_turns_tracing_on(environ, wanted):
    assert tracing_wanted(environ) is wanted


# What runs in a child: build the app, serve one /compute in-process, and
# report which modules of the otel extra got imported (opentelemetry-api is
# imported by FastAPI itself, extra or not) and whether the pool was wrapped.
_PROBE = """
import asyncio, json, sys
# What the otel extra brings: opentelemetry-api itself is FastAPI's dependency.
EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto")
BLOCK = sys.argv[1] == "absent"
if BLOCK:
    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(EXTRA):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Absent())
import httpx
from gateway.app import create_app
from gateway.settings import Settings
from connbridge.demo import spawn_demo_backend

async def main():
    demo = spawn_demo_backend("127.0.0.1:0", b"k" * 32)
    try:
        settings = Settings(backends={"demo": {"address": demo.address, "authkey": "k" * 32}})
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answer = await client.post("/compute", json={"payload": [5, 6]})
            pool = app.state.gateway.backends["demo"].pool
            print(json.dumps({
                "result": answer.json()["result"],
                "imported": sorted(m for m in sys.modules if m.startswith(EXTRA)),
                "wrapped": "call" in vars(pool) or "_acquire" in vars(pool),
                "middleware": [m.cls.__name__ for m in app.user_middleware],
            }))
    finally:
        demo.close()

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("off", {}),
        ("off", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}),
        ("absent", {"OTEL_TRACES_EXPORTER": "otlp"}),
    ],
)
def test_off_or_absent_imports_and_wraps_nothing(mode, extra):
    env = child_env(**extra)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["result"] == 11
    assert report["imported"] == []
    assert report["wrapped"] is False
    assert "TracingMiddleware" not in report["middleware"]
    if mode == "absent":
        # Asked for but not installed: one warning naming the extra.
        assert result.stderr.count("install connbridge[otel]") == 1, result.stderr


def test_on_wraps_the_pools_and_adds_the_middleware(receiver):
    env = otel_env(receiver)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "on"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["result"] == 11
    assert report["wrapped"] is True
    assert report["middleware"][0] == "TracingMiddleware"
    assert "opentelemetry.sdk.trace" in report["imported"]
    # The lifespan's end flushed the spans: the receiver has them already.
    names = sorted(span.name for _, span in receiver.wait_for(2, timeout=1))
    assert names == ["POST /compute", "call demo"]
    assert time.monotonic() - started < 60
