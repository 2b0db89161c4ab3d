"""The gateway plus a no-op route: the ceiling of the framework, in the gateway's own process.

``python -m bench.ceiling_app --config PATH --ready-file PATH`` builds the
real app with :func:`gateway.app.create_app`, adds ``POST /bench/noop``, and
serves it under uvicorn with the configuration the ``connbridge-gateway``
command builds (:func:`gateway.cli._uvicorn_config`: uvloop, httptools, the
WebSocket options, no access log from uvicorn). Once listening it writes
``127.0.0.1:PORT`` to the ready file.

``/bench/noop`` does what ``POST /compute`` does before it reaches a
backend, through the same middleware: read the ``Request-Timeout`` header,
read and check the body under the same ``body_timeout``
(:func:`gateway.body.read_json`), check the call (:func:`gateway.calls.parse_call`),
and answer with orjson, ``{"result": <payload>}``. What ``/compute`` costs
beyond it is the gateway's own work: the codec, the pool and the backend's
round trip.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.app import create_app
from gateway.body import read_json
from gateway.calls import parse_call
from gateway.cli import _Server, _uvicorn_config
from gateway.deadlines import header_timeout
from gateway.deps import gateway_state
from gateway.log import configure_logging
from gateway.settings import load_settings

from .servers import write_ready_file

__all__ = ["NOOP_PATH", "add_noop_route", "main"]

NOOP_PATH = "/bench/noop"


def add_noop_route(app: FastAPI) -> None:
    """Add ``POST /bench/noop`` to the gateway ``app`` (kept out of its OpenAPI document)."""

    async def noop(request: Request) -> Response:
        # The same steps as gateway.routes.compute._compute, up to the backend.
        state = gateway_state(request.app)
        header_timeout(request.scope)
        gateway = state.settings.gateway
        body = await read_json(request, gateway.max_body_bytes, gateway.body_timeout)
        call = parse_call(body)
        return Response(orjson.dumps({"result": call.payload}), media_type="application/json")

    app.add_api_route(NOOP_PATH, noop, methods=["POST"], include_in_schema=False)


class _ReadyServer(_Server):
    """The CLI's uvicorn server, which also writes its bound address to a file."""

    def __init__(self, config: uvicorn.Config, ready_file: str) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            write_ready_file(self.ready_file, f"{host}:{port}")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the gateway with its ceiling route on a free loopback port until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling_app")
    parser.add_argument("--config", required=True, help="the gateway's TOML configuration")
    parser.add_argument("--ready-file", required=True, help="where to write host:port")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.gateway.log_level, settings.gateway.log_format)
    app = create_app(settings)
    add_noop_route(app)
    server = _ReadyServer(_uvicorn_config(app, settings, settings.gateway.host, 0), args.ready_file)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
