"""The WebSocket baseline: a plain ``websockets`` server that answers each call at once.

``python -m bench.echo_ws --ready-file PATH`` listens on a free loopback
port and answers each text message ``{"id": ..., "payload": ...}`` with
``{"id": ..., "result": <payload>}``, parsed and written with orjson, one
message after the other, with no backend. It runs on uvloop, as the gateway
does, and without compression, as the gateway's default
(``per_message_deflate = false``); ``websockets`` would otherwise offer it.

Once listening, the bound ``127.0.0.1:PORT`` is written to the ready file.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, serve

from .servers import HOST, write_ready_file

__all__ = ["main"]


async def _answer(websocket: ServerConnection) -> None:
    async for message in websocket:
        call = orjson.loads(message)
        reply = orjson.dumps({"id": call["id"], "result": call["payload"]})
        await websocket.send(reply.decode("utf-8"))


async def _serve(ready_file: str) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(_answer, HOST, 0, compression=None) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        write_ready_file(ready_file, f"{host}:{port}")
        await stop


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.echo_ws")
    parser.add_argument("--ready-file", required=True, help="where to write host:port")
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
