"""A latency relay: a TCP forwarder that holds every chunk for a fixed delay, each way.

``python -m bench.relay --target HOST:PORT --ready-file PATH [--delay-ms 0.5]``
listens on a free loopback port (written to the ready file as ``HOST:PORT``)
and, for each connection accepted, opens one to the target and forwards the
bytes both ways. Each chunk read from one side is written to the other
``delay`` seconds after it was read (0.5 ms by default: a 1 ms round trip),
in order, with no bandwidth limit. The kernel of the bench machine has no
``netem``, so this is how the ``remote`` rows put a network between the
gateway and its backend; the direct stdlib client of those rows goes through
the same relay.

Why it is built this way:

* **One thread, ``select``.** ``select`` takes its timeout in microseconds,
  where ``epoll`` and ``poll`` (and so asyncio and uvloop) round it up to a
  whole millisecond, which would make a 0.5 ms delay anything up to 1.5 ms.
  ``select`` limits the relay to descriptors below 1024: it refuses
  connections beyond :data:`MAX_PAIRS`, far more than a bench row opens.
* **The delay is a lower bound.** A chunk is written once the clock says its
  time has come, never before; it may go a little later (the wake-up, the
  timer slack of about 50 us). Chunks that are due together go in one write.
* **Ends are forwarded in order.** An end of file from one side becomes a
  ``shutdown(SHUT_WR)`` of the other once the chunks before it have been
  written, after the same delay; the pair is closed when both directions
  have ended. A reset (or any read error) becomes a reset of the other side
  (``SO_LINGER`` 0, then close) after the pending chunks, and ends the
  pair; so does a failed write.
* **Bounded.** A direction with :data:`MAX_QUEUED` bytes waiting is not read
  until the other side takes them: TCP's own flow control then slows the
  sender, as a real link's buffers would.

Its CPU cost is read from outside (:func:`bench.servers.cpu_seconds` of its
PID), so the relay itself prints nothing while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["CHUNK", "DEFAULT_DELAY", "MAX_PAIRS", "MAX_QUEUED", "Relay", "main"]

#: Delay of each direction, in seconds (0.5 ms each way: a 1 ms round trip).
DEFAULT_DELAY: Final = 0.0005
#: Largest read from a socket at once.
CHUNK: Final = 256 * 1024
#: Bytes waiting in one direction past which its source is no longer read.
MAX_QUEUED: Final = 4 * 1024 * 1024
#: Connections relayed at once; ``select`` cannot watch descriptors past 1023.
MAX_PAIRS: Final = 400
#: How long the relay waits for the target to accept a connection.
CONNECT_TIMEOUT: Final = 5.0

#: Markers queued after the data of a direction that has ended.
_EOF: Final = b""
_RESET: Final = None


class _Direction:
    """Bytes from ``src`` to ``dst``: the queue of timed chunks and how far it got."""

    __slots__ = ("blocked", "chunks", "dst", "ended", "outcome", "pending", "queued", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        #: (time due, data); data ``_EOF`` or ``_RESET`` is the source's end.
        self.chunks: deque[tuple[float, bytes | None]] = deque()
        #: Due bytes not yet accepted by ``dst`` (its send buffer was full).
        self.pending = bytearray()
        self.queued = 0
        self.blocked = False  # waiting for dst to be writable
        self.ended = False  # the source's end has been read
        #: None while running; "eof" once delivered as a shutdown; "abort" otherwise.
        self.outcome: str | None = None

    @property
    def reading(self) -> bool:
        return not self.ended and self.queued < MAX_QUEUED

    def read(self, now: float, delay: float) -> None:
        try:
            data: bytes | None = self.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = _RESET
        if not data:
            self.ended = True
        self.chunks.append((now + delay, data))
        self.queued += len(data or b"")

    def next_due(self) -> float | None:
        if self.blocked or self.outcome is not None or not self.chunks:
            return None
        return self.chunks[0][0]

    def flush(self, now: float) -> None:
        """Write every chunk that is due, then the end if it is due and nothing is left."""
        if self.outcome is not None:
            return
        while self.chunks and self.chunks[0][0] <= now and self.chunks[0][1]:
            data = self.chunks.popleft()[1]
            assert data is not None
            self.pending += data
        if self.pending:
            try:
                sent = self.dst.send(self.pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.outcome = "abort"
                return
            del self.pending[:sent]
            self.queued -= sent
            self.blocked = bool(self.pending)
            if self.blocked:
                return
        if self.chunks and self.chunks[0][0] <= now and not self.chunks[0][1]:
            end = self.chunks.popleft()[1]
            if end is _RESET:
                self.outcome = "abort"
                return
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                self.outcome = "abort"
                return
            self.outcome = "eof"


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, as a peer that went away would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Relay:
    """The relay's state: the listening socket, the target and the pairs being relayed."""

    def __init__(self, listener: socket.socket, target: tuple[str, int], delay: float) -> None:
        self.listener = listener
        self.target = target
        self.delay = delay
        self.directions: list[_Direction] = []
        self.by_src: dict[socket.socket, _Direction] = {}
        self.by_dst: dict[socket.socket, _Direction] = {}
        listener.setblocking(False)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.directions) >= 2 * MAX_PAIRS:
            _abort(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            _abort(client)  # the target is down: so is the link, as the client sees it
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, server), (server, client)):
            direction = _Direction(src, dst)
            self.directions.append(direction)
            self.by_src[src] = direction
            self.by_dst[dst] = direction

    def _close_finished(self) -> None:
        for direction in [d for d in self.directions if d.outcome is not None]:
            if direction not in self.directions:
                continue  # its pair was closed already
            other = self.by_src[direction.dst]
            closing: Callable[[socket.socket], None]
            if direction.outcome == "abort" or other.outcome == "abort":
                closing = _abort
            elif other.outcome == "eof":
                closing = socket.socket.close
            else:
                continue  # the other direction still runs: a half-closed link
            for d in (direction, other):
                del self.by_src[d.src]
                del self.by_dst[d.dst]
                self.directions.remove(d)
                closing(d.src)

    def step(self, wait: float | None) -> None:
        """Forward what is due, then wait (at most ``wait`` seconds) for sockets or the next due."""
        now = time.monotonic()
        for direction in self.directions:
            direction.flush(now)
        self._close_finished()
        dues = [due for d in self.directions if (due := d.next_due()) is not None]
        timeout = wait
        if dues:
            timeout = max(0.0, min(dues) - time.monotonic())
            if wait is not None:
                timeout = min(timeout, wait)
        readers = [self.listener, *(d.src for d in self.directions if d.reading)]
        writers = [d.dst for d in self.directions if d.blocked]
        readable, writable, _ = select.select(readers, writers, [], timeout)
        now = time.monotonic()
        for sock in readable:
            if sock is self.listener:
                self._accept()
            else:
                self.by_src[sock].read(now, self.delay)
        for sock in writable:
            self.by_dst[sock].blocked = False

    def serve_forever(self) -> None:
        while True:
            self.step(None)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Relay connections on a free loopback port to ``--target`` until killed."""
    from .servers import HOST, write_ready_file

    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--target", required=True, type=_address, help="HOST:PORT to relay to")
    parser.add_argument("--ready-file", required=True, help="where to write the bound HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY * 1000)
    args = parser.parse_args(argv)
    listener = socket.create_server((HOST, 0), backlog=128)
    host, port = listener.getsockname()[:2]
    relay = Relay(listener, args.target, args.delay_ms / 1000)
    write_ready_file(args.ready_file, f"{host}:{port}")
    relay.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
