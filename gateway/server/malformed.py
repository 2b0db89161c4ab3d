"""uvicorn's HTTP/1.1 protocols, answering a malformed request with a problem.

uvicorn parses HTTP before any app sees it; when its parser (httptools, or
h11 where httptools is missing) refuses a request (a NUL or a bare CR in a
header, both ``Content-Length`` and ``Transfer-Encoding``, a negative
length, an obsolete folded header line, a broken chunk...) it writes a
``text/plain`` "Invalid HTTP request received." and closes the connection.
These subclasses write the same 400 as an RFC 9457 body instead
(``malformed-http``, see :mod:`gateway.problems`), with a fresh request id.

Only :meth:`send_400_response`, which uvicorn calls for a request it cannot
parse, is overridden: a request that parses runs exactly uvicorn's code.
The detail is fixed text: the parsers' own messages may quote the bytes
they refused, which can be a header holding a key.

:class:`~gateway.server.http_protocol.GatewayHttpProtocol`, the protocol
the gateway serves with, builds on :class:`ProblemHttpToolsProtocol`.
"""

from __future__ import annotations

from typing import Final

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..context import new_request_id
from ..problems import MALFORMED_HTTP, MEDIA_TYPE, problem_body

__all__ = [
    "MALFORMED_DETAIL",
    "ProblemH11Protocol",
    "ProblemHttpToolsProtocol",
    "malformed_response",
]

#: The ``detail`` of every ``malformed-http`` problem.
MALFORMED_DETAIL: Final = (
    "the request is not valid HTTP/1.1 (its request line, a header, its length or its "
    "chunks); the connection is closed"
)


def malformed_response() -> bytes:
    """The whole ``400 malformed-http`` response, status line to body, with a new request id."""
    request_id = new_request_id()
    body = orjson.dumps(problem_body(MALFORMED_HTTP, MALFORMED_DETAIL, request_id=request_id))
    return b"".join(
        [
            b"HTTP/1.1 400 Bad Request\r\n",
            b"content-type: " + MEDIA_TYPE.encode("ascii") + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a request h11 refuses gets a ``malformed-http`` problem."""

    def send_400_response(self, msg: str) -> None:
        # h11 has refused their side; the response is written as raw bytes
        # (h11 would add nothing but the same headers).
        self.transport.write(malformed_response())
        self.transport.close()


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request httptools refuses gets a problem."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(malformed_response())
        self.transport.close()
