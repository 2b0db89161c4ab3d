"""The count of client connections and WebSockets, shared by every protocol of one server.

A connection that holds no request (idle between keep-alive requests, or
still sending its headers) is *waiting*; waiting connections are kept in
the order they started to wait. When a new connection would go over
``max_connections``, the longest-waiting one is closed to make room: under
a slowloris attack the attacker's sockets are the ones that wait, and a
client that sends its request at once is served. When no connection waits,
the new one is refused with a 503.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ClientLimits", "Evictable"]


class Evictable(Protocol):
    """A connection that :class:`ClientLimits` may close to make room."""

    def evict(self) -> None:
        """Close the connection now: it holds no request."""


class ClientLimits:
    """Open client connections (HTTP and WebSocket) and open WebSockets, with their caps."""

    def __init__(self, max_connections: int, max_sockets: int, backlog: int = 2048) -> None:
        self.max_connections = max_connections
        self.max_sockets = max_sockets
        #: The listen backlog that goes with the cap (uvicorn's ``backlog``).
        self.backlog = backlog
        #: Client connections open (a WebSocket counts from its HTTP request on).
        self.connections = 0
        #: WebSockets past their handshake.
        self.sockets = 0
        #: Connections closed to make room for a new one.
        self.evicted = 0
        #: Connections and WebSocket handshakes refused at a cap.
        self.refused = 0
        # Insertion-ordered: the first key has waited longest.
        self._waiting: dict[Evictable, None] = {}

    def open(self, connection: Evictable) -> bool:
        """Count a new connection; False when it must be refused (nothing could be closed)."""
        if self.connections >= self.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self.refused += 1
                return False
            del self._waiting[victim]
            self.evicted += 1
            victim.evict()
        self.connections += 1
        return True

    def close(self, connection: Evictable) -> None:
        """A counted connection is gone."""
        self._waiting.pop(connection, None)
        self.connections -= 1

    def waiting(self, connection: Evictable) -> None:
        """``connection`` holds no request now (it moves to the end of the line)."""
        self._waiting.pop(connection, None)
        self._waiting[connection] = None

    def busy(self, connection: Evictable) -> None:
        """``connection`` holds a request (or became a WebSocket): not to be evicted."""
        self._waiting.pop(connection, None)

    def open_socket(self) -> bool:
        """Count a WebSocket handshake; False at ``max_sockets`` (refuse it)."""
        if self.sockets >= self.max_sockets:
            self.refused += 1
            return False
        self.sockets += 1
        return True

    def close_socket(self) -> None:
        """A counted WebSocket is gone."""
        self.sockets -= 1
