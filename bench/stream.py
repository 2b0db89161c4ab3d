"""The stream row: replies per second through ``POST /backends/demo/stream`` (NDJSON), one client.

The gateway side: one keep-alive HTTP/1.1 connection from this process (a
plain socket, so the client costs next to nothing), one stream of up to
:data:`PER_STREAM` replies after the other, ``{"op": "stream", "count": n,
"value": 1}`` with ``"replies": n``, until :data:`REPLIES` have come. Each
response is read whole and checked: status 200, ``n`` result lines, the end
item ``{"end":{"reason":"count"}}``. The baseline: a stdlib ``Client`` on
one connection sends the same operation to the same demo backend and
receives the ``n`` replies, checking each one's ``seq``. Target: the gateway
at least 0.3x the direct reader (it adds the codec, JSON and HTTP chunks per
reply on top of the same pickles).
"""

from __future__ import annotations

import socket
import time
from multiprocessing.connection import Client
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from .core import RUNS
from .report import comparison
from .servers import Backend, Server, knob

__all__ = ["PER_STREAM", "REPLIES", "direct_replies_per_second", "gateway_replies_per_second"]

REPLIES: Final = int(knob("STREAM_REPLIES", 50_000, 4_000))
#: The demo backend streams at most 10,000 replies per request.
PER_STREAM: Final = 10_000
_RESULT: Final = b'{"result":{"seq":'
_END: Final = b'{"end":{"reason":"count"}}'
_LAST_CHUNK: Final = b"\r\n0\r\n\r\n"


def _streams(total: int) -> list[int]:
    sizes = [PER_STREAM] * (total // PER_STREAM)
    if total % PER_STREAM:
        sizes.append(total % PER_STREAM)
    return sizes


def _read_response(sock: socket.socket) -> bytes:
    buffer = bytearray()
    while not buffer.endswith(_LAST_CHUNK):
        data = sock.recv(256 * 1024)
        if not data:
            raise RuntimeError("the gateway closed the stream's connection")
        buffer += data
    return bytes(buffer)


def gateway_replies_per_second(url: str, total: int = REPLIES) -> float:
    """Replies per second read from the gateway's NDJSON stream, one connection.

    Raises:
        RuntimeError: a response was not a complete stream of the replies asked for.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for count in _streams(total):
            body = orjson.dumps(
                {"payload": {"op": "stream", "count": count, "value": 1}, "replies": count}
            )
            sock.sendall(
                b"POST /backends/demo/stream HTTP/1.1\r\nHost: bench\r\n"
                b"Content-Type: application/json\r\nAccept: application/x-ndjson\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            response = _read_response(sock)
            if (
                not response.startswith(b"HTTP/1.1 200 ")
                or response.count(_RESULT) != count
                or _END not in response
            ):
                raise RuntimeError(f"the gateway's stream was not complete: {response[:300]!r}")
        return total / (time.perf_counter() - started)


def direct_replies_per_second(backend: Backend, total: int = REPLIES) -> float:
    """Replies per second read by a stdlib ``Client`` from the same operation, one connection.

    Raises:
        RuntimeError: a reply was not the next one of its stream.
    """
    with Client(backend.stdlib_address, authkey=backend.authkey.encode()) as conn:
        started = time.perf_counter()
        for count in _streams(total):
            conn.send({"op": "stream", "count": count, "value": 1})
            for seq in range(count):
                if conn.recv() != {"seq": seq, "value": 1}:
                    raise RuntimeError("the demo backend's stream was out of order")
        return total / (time.perf_counter() - started)


def stream_rows(gateway: Server, backend: Backend, total: int = REPLIES) -> list[dict[str, Any]]:
    """Row 9: ``/stream`` (NDJSON) against a stdlib ``Client`` reading the same stream."""
    gateway_replies_per_second(gateway.url, min(total, 2_000))  # warm-up
    direct_replies_per_second(backend, min(total, 2_000))
    ours: list[float] = []
    direct: list[float] = []
    for _ in range(RUNS):
        ours.append(gateway_replies_per_second(gateway.url, total))
        gateway.check_alive()
        direct.append(direct_replies_per_second(backend, total))
    return [
        comparison(
            "Stream /backends/demo/stream NDJSON vs stdlib Client (1 client)",
            ours,
            direct,
            0.3,
            unit="replies/s",
        )
    ]
