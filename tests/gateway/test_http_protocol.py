"""Malformed HTTP gets a ``malformed-http`` problem from the server's protocol, not text/plain.

Raw requests over a real socket to the app served by uvicorn with the
protocols of :mod:`gateway.server.malformed` (httptools' and h11's).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from gateway_support import PROBLEM, problem_type, serve_gateway

from gateway.server.http_protocol import GatewayHttpProtocol
from gateway.server.malformed import (
    MALFORMED_DETAIL,
    ProblemH11Protocol,
    ProblemHttpToolsProtocol,
)

pytestmark = pytest.mark.timeout(60)

HEAD = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
POST = (
    b"POST /compute HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\n"
)
#: Kinds of malformed request, each refused by the parser before any app sees it.
MALFORMED = {
    "nul-in-header": HEAD + b"X-A: a\x00b\r\n\r\n",
    "cr-in-header": HEAD + b"X-A: a\rb\r\n\r\n",
    "length-and-chunked": POST
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative-length": POST + b"Content-Length: -1\r\n\r\n",
    "non-numeric-length": POST + b"Content-Length: 1x\r\n\r\n",
    "two-lengths": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "obs-fold": HEAD + b"X-A: a\r\n b\r\n\r\n",
    "space-before-colon": HEAD + b"X-A : b\r\n\r\n",
    "no-colon": HEAD + b"X-A\r\n\r\n",
    "bad-chunk": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "control-in-target": b"GET /heal\x01thz HTTP/1.1\r\nHost: gw\r\n\r\n",
    "bad-method": b"G(T /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
    "bad-version": b"GET /healthz HTTP/1.x\r\nHost: gw\r\n\r\n",
}


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # the server closes
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def settings():
    # No backend is needed: the parser refuses these before routing.
    return {"backends": {"none": {"address": "unix:/nonexistent/connbridge.sock"}}}


def test_the_served_protocol_answers_malformed_requests_with_a_problem():
    assert issubclass(GatewayHttpProtocol, ProblemHttpToolsProtocol)


@pytest.mark.parametrize("protocol", [ProblemHttpToolsProtocol, ProblemH11Protocol])
async def test_malformed_requests_get_a_problem(settings, protocol):
    refused = []
    async with serve_gateway(settings, http=protocol) as gw:
        for kind, request in MALFORMED.items():
            status, headers, body = parse(await exchange(gw.port, request))
            if b"malformed-http" not in body:
                # A kind the parser accepts (h11 is more lenient here and
                # there) is the app's to answer, never with a 500.
                assert status < 500, (kind, status)
                continue
            refused.append(kind)
            assert headers["content-type"] == PROBLEM, kind
            assert headers["connection"] == "close"
            problem = orjson.loads(body)
            assert int(headers["content-length"]) == len(body)
            assert problem["type"] == problem_type("malformed-http")
            assert problem["status"] == 400
            assert problem["detail"] == MALFORMED_DETAIL
            assert problem["request_id"] == headers["x-request-id"]
        # The server still serves well-formed requests.
        response = await gw.client.get("/healthz")
        assert response.status_code == 200
    assert len(refused) >= 10, refused


def test_the_command_line_serves_with_it():
    from gateway.app import create_app
    from gateway.cli import _uvicorn_config
    from gateway.settings import Settings

    settings = Settings(backends={"none": {"address": "unix:/nonexistent/connbridge.sock"}})
    config = _uvicorn_config(create_app(settings), settings, "127.0.0.1", 0)
    assert isinstance(config.http, type)
    assert issubclass(config.http, ProblemHttpToolsProtocol)
