"""A slowloris client, run as its own process by test_clients.py.

``python slowloris.py PORT SOCKETS SECONDS``: keeps SOCKETS connections
open for SECONDS, each sending a request line and then one header line a
second, never the end of the headers; each connection the server closes is
opened again 0.1 s later. Prints the number of reconnections at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def attack(port: int, sockets: int, seconds: float) -> int:
    end = time.monotonic() + seconds
    reconnects = 0

    async def one() -> None:
        nonlocal reconnects
        while time.monotonic() < end:
            writer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() < end and not reader.at_eof():
                    await asyncio.sleep(1.0)
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
            reconnects += 1
            await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(sockets)))
    return reconnects


if __name__ == "__main__":
    port, sockets, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    print(asyncio.run(attack(port, sockets, seconds)))
