"""The gateway's HTTP protocols: malformed requests, and one write per response.

Malformed HTTP gets a ``malformed-http`` problem from the server's protocol,
not text/plain: raw requests over a real socket to the app served by uvicorn
with the protocols of :mod:`gateway.server.malformed` (httptools' and h11's).
The gateway's own protocol (:mod:`gateway.server.http_protocol`) writes a
response's head and body together; its transport is wrapped so that each
``write`` is recorded on its way to the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from gateway_support import PROBLEM, RecordedTransport, problem_type, serve_gateway

from gateway.server.http_protocol import GatewayHttpProtocol, http_protocol
from gateway.server.limits import ClientLimits
from gateway.server.malformed import (
    MALFORMED_DETAIL,
    ProblemH11Protocol,
    ProblemHttpToolsProtocol,
)
from gateway.settings import GatewaySettings, Settings

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


def recorded_protocol(writes: list[bytes]) -> type[GatewayHttpProtocol]:
    """The gateway's HTTP protocol, its writes kept in ``writes``."""
    bound = http_protocol(GatewaySettings(), ClientLimits(max_connections=16, max_sockets=16))

    class Recorded(bound):  # type: ignore[misc, valid-type]
        recorded: ClassVar[list[bytes]] = writes

        def connection_made(self, transport: Any) -> None:
            super().connection_made(RecordedTransport(transport, self.recorded))

    return Recorded


BIG = b"x" * (100 * 1024)


def add_routes(release: asyncio.Event) -> Any:
    def setup(app: FastAPI) -> None:
        @app.get("/test/big")
        async def big() -> Response:
            return Response(BIG, media_type="application/octet-stream")

        @app.get("/test/later")
        async def later() -> StreamingResponse:
            async def items() -> AsyncIterator[bytes]:
                await release.wait()
                yield b"late\n"

            return StreamingResponse(items(), media_type="text/plain")

    return setup


@contextlib.asynccontextmanager
async def recorded_connection(
    settings: Settings,
) -> AsyncIterator[tuple[list[bytes], asyncio.Event, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A gateway with the test routes whose writes are recorded, and a connection to it.

    Yields the writes, the event that releases ``/test/later``, and the connection.
    """
    writes: list[bytes] = []
    release = asyncio.Event()
    async with serve_gateway(
        settings, http=recorded_protocol(writes), setup=add_routes(release)
    ) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            yield writes, release, reader, writer
        finally:
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def test_a_response_leaves_in_one_write(settings):
    async with recorded_connection(settings) as (writes, _, reader, writer):
        for _ in range(2):  # keep-alive: each response on its own
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await read_head(reader)
            length = int(parse(head)[1]["content-length"])
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            assert writes[-1] == head + body
        assert len(writes) == 2
        # A body over the joining limit follows its head, uncopied.
        writer.write(b"GET /test/big HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await read_head(reader)
        assert await asyncio.wait_for(reader.readexactly(len(BIG)), 10) == BIG
        assert writes[2:] == [head, BIG]


async def test_a_head_whose_body_is_not_ready_is_written_alone(settings):
    async with recorded_connection(settings) as (writes, release, reader, writer):
        writer.write(b"GET /test/later HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await read_head(reader)  # before any body exists
        assert parse(head)[0] == 200
        assert writes == [head]
        release.set()
        assert await asyncio.wait_for(reader.readuntil(b"late\n"), 10) == b"5\r\nlate\n"


async def test_an_answer_to_head_with_connection_close_is_not_lost(settings):
    # No body is written for HEAD: the held head must leave before the close.
    async with recorded_connection(settings) as (writes, _, reader, writer):
        writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    assert parse(raw)[0] in (200, 405), raw
    assert raw.endswith(b"\r\n\r\n") and writes == [raw]


async def test_pipelined_requests_are_answered_in_order(settings):
    async with recorded_connection(settings) as (writes, _, reader, writer):
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /no-such-path HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 10)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [200, 404, 200], raw
    assert b"".join(writes) == raw
