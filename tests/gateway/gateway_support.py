"""Helpers of the gateway tests: the real app, served by uvicorn on a real port.

:func:`serve_gateway` runs ``create_app(settings)`` under ``uvicorn.Server``
in the test's own event loop, on 127.0.0.1 with a port picked by the kernel,
and yields an ``httpx.AsyncClient`` bound to it. Its lifespan opens real
pools to real backends (subprocesses from the ``start_backend`` fixtures).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.deps import gateway_state
from gateway.settings import Settings
from gateway.state import GatewayState

HERE = Path(__file__).resolve().parent
#: A Listener that answers with refused pickles, broken frames and the like.
HOSTILE = str(HERE / "hostile_backend.py")
PROBLEM = "application/problem+json"
#: A payload_schema for backends that add a pair of integers.
PAIR_SCHEMA = {
    "type": "array",
    "items": {"type": "integer"},
    "minItems": 2,
    "maxItems": 2,
    "examples": [[5, 6]],
}


def problem_type(slug: str) -> str:
    return "https://connbridge.dev/problems/" + slug


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_file(directory: Path, key: bytes, name: str = "authkey") -> str:
    """Write ``key`` to a file (as a secret mount would, with a newline) and return its path."""
    path = directory / name
    path.write_bytes(key + b"\n")
    return str(path)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


@dataclass
class RunningGateway:
    app: FastAPI
    state: GatewayState
    url: str
    port: int
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def serve_gateway(
    settings: Settings | Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    setup: Callable[[FastAPI], None] | None = None,
    http: str | type[asyncio.Protocol] = "httptools",
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway for ``settings`` until the block ends (then shut it down).

    ``http`` is uvicorn's HTTP protocol (a name or a class).
    """
    if not isinstance(settings, Settings):
        settings = Settings(**settings)
    app = create_app(settings)
    if setup is not None:
        setup(app)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        http=http,
        # As the CLI does: longer than httpx's 5 s pool expiry, or a client would
        # send on a connection at the instant the server closes it.
        timeout_keep_alive=settings.gateway.keepalive_timeout,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    done, _ = await asyncio.wait({serving, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        server.should_exit = True
        await asyncio.wait_for(serving, 20)
        raise RuntimeError("the gateway did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20, headers=headers) as client:
            yield RunningGateway(app, gateway_state(app), url, port, client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


def backend_config(backend: Any, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A ``[backends.NAME]`` table for a ``start_backend`` process (key in a file)."""
    config: dict[str, Any] = {"address": backend.address}
    if backend.authkey is not None:
        config["authkey_file"] = key_file(tmp_path, backend.authkey, f"key-{backend.pid}")
    config.update(extra)
    return config


def two_backends_no_default(
    backend: Any, tmp_path: Path, *, key: str, a_only_key: str
) -> dict[str, Any]:
    """Settings with backends ``a`` and ``b`` (both ``backend``) and no default one.

    ``key`` may use both; ``a_only_key`` only ``a``.
    """
    backends = {name: backend_config(backend, tmp_path) for name in ("a", "b")}
    return {
        "backends": backends,
        "auth": {
            "keys": [
                {"name": "all", "sha256": sha256_hex(key)},
                {"name": "a-only", "sha256": sha256_hex(a_only_key), "backends": ["a"]},
            ]
        },
    }


class RecordedTransport:
    """A real transport whose writes are also kept in ``writes`` (each ``write`` as one item)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
