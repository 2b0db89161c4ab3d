"""The one exception tree of connbridge.

Every error the library raises derives from :class:`ConnbridgeError`; foreign
errors (``OSError``, ``asyncio.TimeoutError``, ``pickle.UnpicklingError``) are
translated where they cross into the library and chained with ``from``.

.. code-block:: text

    ConnbridgeError
    ├── AddressError                  (also ValueError) an address that cannot be used
    ├── ConnectError                  the transport could not be opened
    │   └── ConnectTimeout            (also TimeoutError)
    ├── HandshakeError                the challenge/response exchange failed
    │   ├── AuthenticationError       a key was rejected, by us or by the peer
    │   └── HandshakeTimeout          (also TimeoutError) no challenge or answer in time
    ├── ProtocolError                 the byte stream broke the framing rules
    │   └── FrameTooLarge             a frame header announced more than max_frame
    ├── ConnectionClosed              the peer closed the connection (EOF or reset)
    │   └── CallInterrupted           ... while a request was in flight: it may or
    │                                     may not have been processed
    ├── CallTimeout                   (also TimeoutError) no reply within the call timeout
    ├── StreamIdle                    a stream of replies fell silent past its idle limit
    ├── PoolError
    │   ├── PoolClosed                the pool is shutting down or closed
    │   ├── PoolOverloaded            too many callers already wait for a connection
    │   │   └── AcquireTimeout        (also TimeoutError) no connection freed in time
    │   ├── BackendBusy               the server takes no more connections right now
    │   ├── LeaseReleased             a leased connection used after its block ended
    │   └── BackendUnavailable        every address of the backend is down
    ├── CodecError
    │   ├── PayloadError              (also ValueError) JSON that cannot become Python
    │   ├── ResultError               a Python value that cannot become JSON
    │   └── PickleError               a pickle that cannot be loaded or made
    │       ├── RefusedGlobal         the pickle names a global outside the allowlist
    │       └── PickleLimitExceeded   loading it would cost more than the limits allow
    └── ManagerError                  a multiprocessing.managers server answered with a failure
        ├── ManagerRaised             the shared object's method raised (``#ERROR``)
        ├── ManagerFailure            the server itself failed (``#TRACEBACK``,
        │                                 ``#UNSERIALIZABLE``); its traceback is kept apart
        └── ManagerProtocolError      a reply that is not one the manager protocol has

No exception message ever contains an authkey.
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
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
    "ConnectionClosed",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "LeaseReleased",
    "ManagerError",
    "ManagerFailure",
    "ManagerProtocolError",
    "ManagerRaised",
    "PayloadError",
    "PickleError",
    "PickleLimitExceeded",
    "PoolClosed",
    "PoolError",
    "PoolOverloaded",
    "ProtocolError",
    "RefusedGlobal",
    "ResultError",
    "StreamIdle",
]


class ConnbridgeError(Exception):
    """Root of every error raised by connbridge."""


class AddressError(ConnbridgeError, ValueError):
    """An address that cannot be parsed or used on this platform."""


class ConnectError(ConnbridgeError):
    """The transport to the backend could not be opened (refused, unreachable, DNS)."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Opening the transport took longer than ``connect_timeout``."""


class HandshakeError(ConnbridgeError):
    """The authentication exchange failed or was malformed."""


class AuthenticationError(HandshakeError):
    """A key was rejected: the peer refused ours, or the peer's answer was wrong."""


class HandshakeTimeout(HandshakeError, TimeoutError):
    """The peer did not send its part of the handshake in time."""


class ProtocolError(ConnbridgeError):
    """The byte stream broke the framing rules; the connection state is unknown."""


class FrameTooLarge(ProtocolError):
    """A frame header announced a payload larger than the configured maximum.

    Raised from the header alone, before any of the payload is buffered.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class ConnectionClosed(ConnbridgeError):
    """The peer closed the connection (clean EOF or reset)."""


class CallInterrupted(ConnectionClosed):
    """The connection broke while a request was in flight.

    The backend may or may not have processed the request, so it is never
    retried automatically.
    """


class CallTimeout(ConnbridgeError, TimeoutError):
    """No reply arrived within the call timeout."""


class StreamIdle(ConnbridgeError):
    """No further reply arrived within a stream's idle limit.

    One way a stream of replies ends (see :meth:`connbridge.pool.Pool.stream`):
    the backend may or may not send more, so the connection is closed.
    """


class PoolError(ConnbridgeError):
    """Base class of the errors a pool raises about itself."""


class PoolClosed(PoolError):
    """The pool refuses new calls because it is closing or closed."""


class PoolOverloaded(PoolError):
    """Too many callers already wait for a connection; try again later."""


class AcquireTimeout(PoolOverloaded, TimeoutError):
    """No connection became free within ``acquire_timeout`` or the call's budget.

    The request never reached the backend. ``in_use`` and ``draining`` are the
    pool's counts when the wait ended, so the caller can tell a pool taken by
    slow calls from one taken by abandoned ones still draining.
    """

    def __init__(self, message: str, *, in_use: int = 0, draining: int = 0) -> None:
        super().__init__(message)
        self.in_use = in_use
        self.draining = draining


class BackendBusy(PoolError):
    """The server takes no more connections now: it serves a few at a time and is busy.

    Raised for a new long-lived connection (a session) to an address whose
    learned capacity is taken, and when a handshake stays silent while other
    connections to that address work. Not an authentication failure.
    """


class LeaseReleased(PoolError):
    """A connection leased by :meth:`Pool.connection` was used after its block ended.

    By then the connection may serve another caller; using it would let a
    reply reach the wrong one.
    """


class BackendUnavailable(PoolError):
    """No address of the backend can currently be reached or authenticated.

    ``handshake_failed`` is true when every address that failed did so in
    the handshake (a wrong key, or a malformed exchange), so callers can
    tell a configuration problem from a backend that is down. A handshake
    that stayed silent does not count: a busy one-connection server looks
    the same as a Listener that sends no challenge.
    """

    def __init__(self, message: str, *, handshake_failed: bool = False) -> None:
        super().__init__(message)
        self.handshake_failed = handshake_failed


class CodecError(ConnbridgeError):
    """Base class of conversion errors between JSON, Python and pickle."""


class PayloadError(CodecError, ValueError):
    """A JSON value that cannot be turned into Python (unknown tag, bad value, too deep).

    ``path`` locates the offending value, as a JSON Pointer-like list of keys
    and indexes.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        where = "/" + "/".join(str(p) for p in path)
        super().__init__(f"{message} (at {where})" if path else message)
        self.path = path


class ResultError(CodecError):
    """A Python value from a backend that cannot be turned into JSON."""


class PickleError(CodecError):
    """A pickle that could not be loaded (or an object that could not be pickled)."""


class RefusedGlobal(PickleError):
    """A pickle referenced a global outside the allowlist; nothing of it ran."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused to unpickle global {module}.{name}: not in the allowlist")
        self.module = module
        self.name = name


class PickleLimitExceeded(PickleError):
    """A pickle was refused before loading: it would nest, hash, copy or build too much.

    ``limit`` names the bound that was exceeded (``"max_depth"``,
    ``"max_hashed_nodes"``, ``"work_per_byte"``, ``"max_nodes"``, ...).
    """

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"refused the pickle: {message}")
        self.limit = limit


class ManagerError(ConnbridgeError):
    """Base class of the failures a ``multiprocessing.managers`` server reports."""


class ManagerRaised(ManagerError):
    """The method of a shared object raised; ``exception`` is what it raised (``#ERROR``)."""

    def __init__(self, exception: BaseException) -> None:
        super().__init__(f"the shared object raised {type(exception).__name__}")
        self.exception = exception


class ManagerFailure(ManagerError):
    """The manager failed to serve the request (``#TRACEBACK`` or ``#UNSERIALIZABLE``).

    ``kind`` is the reply's tag; ``traceback`` the server's text, for logs
    only: the message never includes it (it shows the server's internals).
    """

    def __init__(self, kind: str, traceback: str) -> None:
        super().__init__(f"the manager failed to serve the request ({kind})")
        self.kind = kind
        self.traceback = traceback


class ManagerProtocolError(ManagerError):
    """A reply that is not a ``(kind, value)`` pair of the manager protocol."""
