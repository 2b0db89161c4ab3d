"""connbridge: speak Python's ``multiprocessing.connection`` protocol on asyncio.

The layers, bottom up:

* :mod:`connbridge.frames` and :mod:`connbridge.handshake`: the wire protocol
  as a sans-I/O core (bytes in, bytes out; no sockets, no event loop);
* :mod:`connbridge.connection`: an asyncio connection on top (``connect``);
  :mod:`connbridge.server` is the server half;
* :mod:`connbridge.pool`: a bounded, self-healing pool per backend;
* :mod:`connbridge.codec` and :mod:`connbridge.unpickler`: JSON to Python and
  back, and the allowlist unpickler;
* :mod:`connbridge.demo`: a demo backend.

Names are imported lazily, so that importing the sans-I/O modules does not
pull in asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AcquireTimeout",
    "Address",
    "AddressError",
    "AuthenticationError",
    "BackendBusy",
    "BackendUnavailable",
    "CallInterrupted",
    "CallTimeout",
    "CodecError",
    "ConnbridgeError",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "ConnectionClosed",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "Lease",
    "LeaseReleased",
    "PayloadError",
    "PickleError",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolOverloaded",
    "PoolSettings",
    "ProtocolError",
    "RefusedGlobal",
    "ResultError",
    "StreamIdle",
    "connect",
    "parse_address",
    "start_server",
]

_WHERE = {
    "Address": "addresses",
    "parse_address": "addresses",
    "Connection": "connection",
    "connect": "connection",
    "Lease": "pool",
    "Pool": "pool",
    "PoolSettings": "pool",
    "start_server": "server",
}

if TYPE_CHECKING:
    from .addresses import Address, parse_address
    from .connection import Connection, connect
    from .errors import (
        AcquireTimeout,
        AddressError,
        AuthenticationError,
        BackendBusy,
        BackendUnavailable,
        CallInterrupted,
        CallTimeout,
        CodecError,
        ConnbridgeError,
        ConnectError,
        ConnectionClosed,
        ConnectTimeout,
        FrameTooLarge,
        HandshakeError,
        HandshakeTimeout,
        LeaseReleased,
        PayloadError,
        PickleError,
        PoolClosed,
        PoolError,
        PoolOverloaded,
        ProtocolError,
        RefusedGlobal,
        ResultError,
        StreamIdle,
    )
    from .pool import Lease, Pool, PoolSettings
    from .server import start_server


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'connbridge' has no attribute {name!r}")
    module = importlib.import_module(f".{_WHERE.get(name, 'errors')}", __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
