"""gateway.server.limits and gateway.server.descriptors: the arithmetic of the client caps."""

from __future__ import annotations

import resource

from gateway.server.descriptors import backlog, client_cap, raise_descriptor_limit, reserved
from gateway.server.limits import ClientLimits
from gateway.settings import GatewaySettings, WebSocketSettings


class Connection:
    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        self.limits.close(self)


def test_the_connection_that_waited_longest_makes_room():
    limits = ClientLimits(max_connections=3, max_sockets=10)
    first, second, busy = (Connection(limits) for _ in range(3))
    for connection in (first, second, busy):
        assert limits.open(connection)
        limits.waiting(connection)
    limits.busy(busy)
    limits.waiting(first)  # served a request: it moves to the end of the line
    newcomer = Connection(limits)
    assert limits.open(newcomer)
    assert (first.evicted, second.evicted, busy.evicted) == (False, True, False)
    assert limits.connections == 3
    assert limits.evicted == 1


def test_with_nothing_waiting_a_newcomer_is_refused():
    limits = ClientLimits(max_connections=1, max_sockets=10)
    only = Connection(limits)
    assert limits.open(only)
    limits.busy(only)
    assert not limits.open(Connection(limits))
    assert (limits.connections, limits.refused) == (1, 1)
    limits.close(only)
    assert limits.open(Connection(limits))


def test_websockets_have_their_own_cap():
    limits = ClientLimits(max_connections=10, max_sockets=2)
    assert limits.open_socket() and limits.open_socket()
    assert not limits.open_socket()
    limits.close_socket()
    assert limits.open_socket()


def test_the_cap_leaves_room_for_backends_and_bursts():
    assert reserved(1024) == 64
    assert reserved(1 << 20) == 1 << 16
    assert client_cap(1024, 168, None) == 1024 - 64 - 168
    assert client_cap(1024, 168, 100) == 100
    assert client_cap(1024, 168, 5000) == 1024 - 64 - 168
    assert client_cap(10, 168, None) == 1
    # The backlog is half of the descriptors left over, between 16 and 2048.
    assert backlog(1024, 792) == 116
    assert backlog(1 << 20, 100) == 2048
    assert backlog(100, 99) == 16


def test_raising_the_descriptor_limit_is_idempotent():
    first = raise_descriptor_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert first.after == soft
    assert raise_descriptor_limit().before == soft


def test_every_new_limit_has_a_default():
    gateway, websocket = GatewaySettings(), WebSocketSettings()
    assert gateway.max_client_connections is None
    assert (gateway.header_timeout, gateway.body_timeout, gateway.keepalive_timeout) == (
        10.0,
        30.0,
        75.0,
    )
    assert gateway.max_header_bytes == 65536
    assert (gateway.linger_timeout, gateway.linger_bytes) == (5.0, 64 * 1024 * 1024)
    assert (websocket.max_sockets, websocket.write_buffer_bytes) == (1000, 65536)
    assert websocket.close_timeout == 5.0
