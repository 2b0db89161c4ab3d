"""The process's descriptor limit: raised at start-up, and what it leaves for clients.

Every client connection holds one descriptor, and so does every backend
connection. A process that runs out (``EMFILE``) cannot accept anything,
not even the probe of a health check; so the soft limit is raised to the
hard one, and the number of client connections is capped below it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Final

__all__ = ["RESERVED", "Descriptors", "backlog", "client_cap", "raise_descriptor_limit", "reserved"]

#: Descriptors kept at least for the process itself: listening sockets, log
#: files, the event loop, imports, the demo backend's pipe.
RESERVED: Final = 64
# Linux refuses a soft limit over fs.nr_open (1,048,576 by default), even
# under an unlimited hard limit.
_CEILING: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Descriptors:
    """The soft limit before and after :func:`raise_descriptor_limit`."""

    before: int
    after: int


def raise_descriptor_limit() -> Descriptors:
    """Raise ``RLIMIT_NOFILE``'s soft limit to its hard limit; both limits, before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return Descriptors(soft, soft)
        return Descriptors(soft, target)
    effective = _CEILING if soft == resource.RLIM_INFINITY else soft
    return Descriptors(effective, effective)


def reserved(limit: int) -> int:
    """Descriptors kept out of the client cap under ``limit``: a sixteenth, at least 64.

    Beyond the process's own needs, they hold the connections accepted in
    one burst, before any of them can make room (see :func:`backlog`).
    """
    return max(RESERVED, limit // 16)


def backlog(limit: int, cap: int) -> int:
    """The listen backlog for ``cap`` client connections under a descriptor ``limit``.

    The event loop accepts whatever the kernel has queued before the first
    new connection can close an old one; a queue larger than the descriptors
    left over would take the process to ``EMFILE``, where libuv accepts and
    at once closes new connections (probes included). Half of what is left,
    between 16 and 2,048.
    """
    return max(16, min(2048, (limit - cap) // 2))


def client_cap(limit: int, backend_descriptors: int, configured: int | None) -> int:
    """Client connections the gateway may hold under a descriptor ``limit``.

    ``backend_descriptors`` is what the pools and sessions may open at most;
    ``configured`` the ``max_client_connections`` setting (``None``: as many
    as fit). Never below 1.
    """
    fits = max(limit - reserved(limit) - backend_descriptors, 1)
    return fits if configured is None else max(min(configured, fits), 1)
