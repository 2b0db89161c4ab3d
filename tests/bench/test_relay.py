"""The bench's latency relay (bench/relay.py), a real process between real sockets.

The relay is part of the harness, not of the product: these tests show that
what the ``remote`` rows measure passes through it intact (every byte, in
order, under back-pressure), that ends of file and resets reach the other
side in order, and that each direction is held for at least the delay. Only
a lower bound of the delay is asserted: how much later a chunk may go
depends on the machine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench import servers
from bench.relay import DEFAULT_DELAY

pytestmark = pytest.mark.slow

Handler = Callable[[socket.socket], None]
#: The fixture: start a target with this handler behind a relay; a client socket to the relay.
RelayTo = Callable[[Handler], socket.socket]
#: Longest any test waits for a socket: a bound, not an expectation.
WAIT = 10.0


class Target:
    """A loopback server in a thread: each accepted socket goes to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.listener = socket.create_server((servers.HOST, 0))
        self.handler = handler
        self.errors: queue.Queue[BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"{host}:{port}"

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # closed by the test
        conn.settimeout(WAIT)
        try:
            self.handler(conn)
        except BaseException as exc:
            self.errors.put(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if not self.errors.empty():
            raise self.errors.get()


@pytest.fixture
def relay_to() -> Iterator[RelayTo]:
    """Start a target with the given handler and a relay to it; return a client socket."""
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(servers.workdir())
        relays: list[servers.Relay] = []

        def make(handler: Handler) -> socket.socket:
            target = Target(handler)
            stack.callback(target.close)
            relay = stack.enter_context(servers.latency_relay(target.address, directory))
            relays.append(relay)
            host, port = relay.address.rsplit(":", 1)
            client = socket.create_connection((host, int(port)), timeout=WAIT)
            stack.callback(client.close)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return client

        yield make
        for relay in relays:
            assert relay.proc.poll() is None  # the relay survived the test's traffic


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts = bytearray()
    while len(parts) < size:
        data = sock.recv(min(1 << 20, size - len(parts)))
        if not data:
            raise EOFError(f"end of file after {len(parts)} of {size} bytes")
        parts += data
    return bytes(parts)


def test_bytes_arrive_whole_and_in_order_both_ways(relay_to: RelayTo) -> None:
    # Chunks of many sizes, echoed: what comes back is what went, byte for byte.
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)

    client = relay_to(echo)
    data = os.urandom(3 * 1024 * 1024)
    sizes = [1, 7, 100, 4096, 65536, 300_000]
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_exactly(client, len(data))))
    reader.start()
    offset = 0
    step = 0
    while offset < len(data):
        size = sizes[step % len(sizes)]
        client.sendall(data[offset : offset + size])
        offset += size
        step += 1
    reader.join(WAIT * 3)
    assert received == [data]


def test_a_reader_that_stops_holds_the_sender_back(relay_to: RelayTo) -> None:
    # The target reads nothing until told to: the relay must stop reading
    # too (bounded queue), so the client's sends block well before it has
    # sent everything; then all of it arrives, in order.
    release = threading.Event()
    got: list[bytes] = []
    total = 64 * 1024 * 1024

    def lazy(conn: socket.socket) -> None:
        release.wait(WAIT * 3)
        got.append(_read_exactly(conn, sent[0]))

    sent = [0]
    client = relay_to(lazy)
    block = os.urandom(1024 * 1024)
    client.settimeout(1.0)
    stream = bytearray()
    try:
        while sent[0] < total:
            n = client.send(block)
            stream += block[:n]
            sent[0] += n
    except TimeoutError:
        pass
    assert 0 < sent[0] < total, "the relay took everything: its queue is not bounded"
    release.set()
    client.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + WAIT * 3
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == [bytes(stream)]


def test_end_of_file_is_forwarded_after_the_data_each_way(relay_to: RelayTo) -> None:
    # Client: request, then EOF. Target: reads to EOF (which must come
    # after all the request), answers, closes. Client: the answer, then EOF.
    seen: list[bytes] = []

    def half_close(conn: socket.socket) -> None:
        request = bytearray()
        while data := conn.recv(65536):
            request += data
        seen.append(bytes(request))
        conn.sendall(b"answer:" + bytes(request[:5]))
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""  # the relay closes its side once both are done

    client = relay_to(half_close)
    client.sendall(b"hello")
    client.sendall(b" world" * 1000)
    client.shutdown(socket.SHUT_WR)
    reply = bytearray()
    while data := client.recv(65536):
        reply += data
    assert reply == b"answer:hello"
    assert seen == [b"hello" + b" world" * 1000]


def test_a_reset_is_forwarded_as_a_reset(relay_to: RelayTo) -> None:
    outcome: list[object] = []
    first = threading.Event()

    def reader(conn: socket.socket) -> None:
        try:
            outcome.append(conn.recv(100))
            first.set()
            outcome.append(conn.recv(100))
        except ConnectionResetError as exc:
            outcome.append(exc)

    client = relay_to(reader)
    client.sendall(b"before")
    assert first.wait(WAIT)  # "before" is through: a reset discards unread data
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    deadline = time.monotonic() + WAIT
    while len(outcome) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome[0] == b"before"
    assert isinstance(outcome[1], ConnectionResetError)


def test_each_direction_is_held_at_least_the_delay(relay_to: RelayTo) -> None:
    # Target and client share this process's monotonic clock, so each
    # direction's time is measured on its own: sent -> read by the target,
    # and the target's answer -> read by the client.
    arrivals: queue.Queue[float] = queue.Queue()
    answers: queue.Queue[float] = queue.Queue()

    def stamp(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while conn.recv(100):
            arrivals.put(time.perf_counter())
            answers.put(time.perf_counter())
            conn.sendall(b"y")

    client = relay_to(stamp)
    forward: list[float] = []
    backward: list[float] = []
    for _ in range(50):
        sent = time.perf_counter()
        client.sendall(b"x")
        assert client.recv(100) == b"y"
        back = time.perf_counter()
        forward.append(arrivals.get(timeout=WAIT) - sent)
        backward.append(back - answers.get(timeout=WAIT))
    assert min(forward) >= DEFAULT_DELAY
    assert min(backward) >= DEFAULT_DELAY


def test_cpu_seconds_reads_a_process_time() -> None:
    spent = servers.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert servers.cpu_seconds(os.getpid()) > spent
