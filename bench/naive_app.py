"""The naive bridge: the endpoint as most people would first write it.

``python -m bench.naive_app --backend HOST:PORT --ready-file PATH`` serves
``POST /compute`` (``{"payload": ...}`` in, ``{"result": ...}`` out) with a
pydantic body model and a plain ``def`` endpoint, which FastAPI runs in its
thread pool; each request opens a new stdlib ``Client`` to the backend,
makes one exchange and closes it. uvicorn runs with its defaults (with
``uvicorn[standard]`` installed: uvloop and httptools, as the gateway has),
except that its access log is off, as the gateway's is in the bench.

The key comes from ``BENCH_DEMO_AUTHKEY``. Once listening, the bound
``127.0.0.1:PORT`` is written to the ready file.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from multiprocessing.connection import Client
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from .servers import AUTHKEY_ENV, HOST, write_ready_file

__all__ = ["ComputeRequest", "create_naive_app", "main"]


class ComputeRequest(BaseModel):
    payload: Any


def create_naive_app(address: tuple[str, int], authkey: bytes) -> FastAPI:
    """The naive bridge to the Listener at ``address``."""
    app = FastAPI()

    @app.post("/compute")
    def compute(request: ComputeRequest) -> dict[str, Any]:
        with Client(address, authkey=authkey) as conn:
            conn.send(request.payload)
            return {"result": conn.recv()}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class _ReadyServer(uvicorn.Server):
    """uvicorn's server, which also writes its bound address to a file once listening."""

    def __init__(self, config: uvicorn.Config, ready_file: str) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            write_ready_file(self.ready_file, f"{host}:{port}")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the naive bridge on a free loopback port until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.naive_app")
    parser.add_argument("--backend", required=True, help="the Listener's host:port")
    parser.add_argument("--ready-file", required=True, help="where to write host:port")
    args = parser.parse_args(argv)
    host, port = args.backend.rsplit(":", 1)
    authkey = os.environb[AUTHKEY_ENV.encode()]
    app = create_naive_app((host, int(port)), authkey)
    # Bound here, on port 0, so the real port is known without a race.
    sock = socket.socket()
    sock.bind((HOST, 0))
    server = _ReadyServer(
        uvicorn.Config(app, log_level="warning", access_log=False), args.ready_file
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
