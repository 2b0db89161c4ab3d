"""A demo backend: a stdlib ``multiprocessing.connection`` Listener with a few operations.

The gateway's ``--demo`` flag starts one of these so that the REST and WebSocket
endpoints have something real to talk to, and the tests use it as a well-behaved
backend.  It runs in a *separate process* (:func:`spawn_demo_backend`), not in a
thread of the gateway: the handlers pickle, sleep and add in Python, and sharing
the GIL with the gateway's event loop would make the gateway's latency depend on
the demo's load.  A process also behaves like a real backend: it can be killed,
restarted, and it owns its socket.

This module uses the standard library only, so it is also a readable example of a
robust hand-written Listener server.  Each message is a pickled request; the reply
(or replies) are pickled values:

``(x, y)`` or ``[x, y]``
    ``x + y``, as in the classic example from the ``multiprocessing`` docs.
``{"op": "echo", "value": v}``
    ``v``.
``{"op": "sleep", "seconds": s, "value": v}``
    sleeps ``s`` seconds (at most :data:`MAX_SLEEP`), then ``v`` (``s`` without a value).
``{"op": "tag", "tag": t, "delay": s}``
    sleeps ``s`` seconds, then ``t``: soak tests check every caller gets its own tag.
``{"op": "raise", "type": "ValueError", "args": [...]}``
    the exception object (built-in exception types only), sent as the reply.
``{"op": "stream", "count": n, "value": v, "delay": s}``
    ``n`` replies ``{"seq": i, "value": v}`` (``1 <= n <=`` :data:`MAX_STREAM_COUNT`).
``{"op": "pid"}``
    ``os.getpid()``, to tell replicas apart.
``{"op": "version"}``
    ``[major, minor, micro]`` of the serving interpreter.
``{"op": "close"}``
    the server closes the connection without replying.

A request that cannot be served is answered with an exception object (a
``TypeError`` for anything that is neither a pair nor a dict, a ``ValueError``
for an unknown or malformed operation, whatever ``x + y`` raised); the
connection stays usable.  Only transport failures (EOF, reset, failed
handshake) end a connection, and nothing a client does ends the server.

Two deliberate differences from a naive Listener server:

* The handshake runs in the connection's thread rather than inside
  ``Listener.accept()``, so a client that connects and never answers the
  challenge blocks only its own thread, not the accept loop.
* Requests are unpickled with an allowlist of plain data types (see
  :data:`SAFE_GLOBALS`), because a demo should not execute whatever a pickle
  names.  Replies are pickled with the protocol the request used (at least 2),
  so clients on old Pythons, down to 2.7, can read them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import connection as mpc
from types import FrameType, TracebackType
from typing import Any, Final, NoReturn, Self

from .plain_types import BUILTIN_EXCEPTIONS

__all__ = [
    "AUTHKEY_ENV",
    "MAX_MESSAGE",
    "MAX_SLEEP",
    "MAX_STREAM_COUNT",
    "REPLIES",
    "SAFE_GLOBALS",
    "DemoBackend",
    "main",
    "serve",
    "spawn_demo_backend",
]

logger = logging.getLogger(__name__)

#: Environment variable through which :func:`spawn_demo_backend` hands the key
#: to the child (argv is visible to every user in ``ps``; the environment is not).
AUTHKEY_ENV: Final = "CONNBRIDGE_DEMO_AUTHKEY"

#: Largest request the demo reads; a bigger frame ends the connection.
MAX_MESSAGE: Final = 64 * 1024 * 1024

#: Longest sleep (``sleep``, ``tag`` and ``stream`` delays), in seconds.
MAX_SLEEP: Final = 3600.0

#: Most replies one ``stream`` request may ask for.
MAX_STREAM_COUNT: Final = 10_000

#: The demo's reply discipline, for the pool's ``replies`` setting: its
#: ``stream`` operation answers one message several times, so a pool must not
#: reuse a connection after a reply (see :mod:`connbridge.pool`).
REPLIES: Final = "many"

_BUILTIN_MODULES: Final = frozenset({"builtins", "__builtin__", "exceptions"})

#: ``(module, name)`` pairs a request pickle may reference.  Python 2 pickles name
#: ``__builtin__`` and ``exceptions``; those are accepted for the built-in names.
#: Built-in exception classes are accepted as well.
SAFE_GLOBALS: Final = frozenset(
    {
        *(
            ("builtins", name)
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "range",
                "set",
                "slice",
                "str",
                "tuple",
                "Ellipsis",
                "NotImplemented",
            )
        ),
        ("_codecs", "encode"),  # how protocol 2 spells a bytes object
        ("collections", "OrderedDict"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
    }
)


class _CloseRequested(Exception):
    """Raised by the ``close`` operation: end the connection without replying."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`SAFE_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module in _BUILTIN_MODULES else module, name)
        if key in SAFE_GLOBALS or (key[0] == "builtins" and _builtin_exception(name)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the demo backend does not load {module}.{name}")


def _builtin_exception(name: str) -> type[BaseException] | None:
    return BUILTIN_EXCEPTIONS.get(name)


def _loads(data: bytes) -> object:
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _reply_protocol(data: bytes) -> int:
    # Protocol 2 and later start with the PROTO opcode (0x80) and the number.
    # Answering in the client's own protocol lets a Python 2 client read the
    # reply; 2 is the floor because every Python since 2.3 reads it.
    if len(data) >= 2 and data[0] == 0x80:
        return max(2, min(data[1], pickle.HIGHEST_PROTOCOL))
    return 2


# -- operations ---------------------------------------------------------------


def _answers(request: object) -> Iterable[object]:
    """The replies to one request; raising means "reply with this exception"."""
    if isinstance(request, dict):
        return _operation(request)
    if isinstance(request, tuple | list) and len(request) == 2:
        x, y = request
        return [x + y]
    raise TypeError(f"expected a pair (x, y) or an operation dict, got {type(request).__name__}")


def _operation(request: dict[Any, Any]) -> Iterable[object]:
    op = request.get("op")
    if op == "echo":
        return [request.get("value")]
    if op == "sleep":
        seconds = _seconds(request, "seconds", required=True)
        time.sleep(seconds)
        return [request.get("value", request["seconds"])]
    if op == "tag":
        time.sleep(_seconds(request, "delay"))
        return [request.get("tag")]
    if op == "raise":
        return [_exception(request)]
    if op == "stream":
        return _stream(request)
    if op == "pid":
        return [os.getpid()]
    if op == "version":
        return [list(sys.version_info[:3])]
    if op == "close":
        raise _CloseRequested
    raise ValueError(f"unknown op {op!r}")


def _seconds(request: dict[Any, Any], key: str, *, required: bool = False) -> float:
    if key not in request and not required:
        return 0.0
    value = request.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number of seconds")
    if not 0 <= value <= MAX_SLEEP:
        raise ValueError(f"{key!r} must be between 0 and {MAX_SLEEP:g}")
    return float(value)


def _exception(request: dict[Any, Any]) -> BaseException:
    name = request.get("type")
    cls = _builtin_exception(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"'type' must name a built-in exception, got {name!r}")
    args = request.get("args", [])
    if not isinstance(args, list | tuple):
        raise ValueError("'args' must be a list")
    return cls(*args)


def _stream(request: dict[Any, Any]) -> Iterator[object]:
    count = request.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("'count' must be an integer")
    if not 1 <= count <= MAX_STREAM_COUNT:
        raise ValueError(f"'count' must be between 1 and {MAX_STREAM_COUNT}")
    delay = _seconds(request, "delay")
    value = request.get("value")

    # Validated eagerly above; only the sending is lazy, so the delay really
    # separates the messages on the wire.
    def messages() -> Iterator[object]:
        for seq in range(count):
            if seq and delay:
                time.sleep(delay)
            yield {"seq": seq, "value": value}

    return messages()


# -- serving ------------------------------------------------------------------


def _send(conn: mpc.Connection[Any, Any], value: object, protocol: int) -> None:
    try:
        data = pickle.dumps(value, protocol)
    except Exception as exc:
        # The reply itself cannot be pickled: say so instead.
        data = pickle.dumps(TypeError(f"cannot pickle the reply: {exc}"), protocol)
    conn.send_bytes(data)


def _serve_connection(conn: mpc.Connection[Any, Any], authkey: bytes | None) -> None:
    """Authenticate one connection, then answer its requests until it closes."""
    with conn:
        if authkey is not None:
            try:
                mpc.deliver_challenge(conn, authkey)
                mpc.answer_challenge(conn, authkey)
            except Exception as exc:  # wrong key, garbage, client gone
                logger.info("handshake failed: %s", type(exc).__name__)
                return
        while True:
            try:
                data = conn.recv_bytes(MAX_MESSAGE)
            except (EOFError, OSError):
                return
            protocol = _reply_protocol(data)
            try:
                request = _loads(data)
                answers = _answers(request)
            except _CloseRequested:
                return
            except Exception as exc:
                answers = [exc]
            try:
                for answer in answers:
                    _send(conn, answer, protocol)
            except OSError:
                return


def _parse_address(text: str) -> tuple[str | tuple[str, int], str]:
    """Split a connbridge address into a stdlib Listener address and family."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError("a unix address needs a path: unix:/path or unix:@name")
        if path.startswith("@"):
            if not sys.platform.startswith("linux"):
                raise ValueError("abstract unix sockets (unix:@name) exist only on Linux")
            return "\0" + path[1:], "AF_UNIX"
        return path, "AF_UNIX"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        family = "AF_INET6"
    else:
        host, sep, port = text.rpartition(":")
        family = "AF_INET"
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, [v6]:port or unix:/path, got {text!r}")
    return (host, int(port)), family


def _format_address(address: object) -> str:
    """The connbridge spelling of what ``Listener.address`` reports."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):  # Linux reports abstract names as bytes
        address = address.decode("utf-8", "surrogateescape")
    if isinstance(address, str) and address.startswith("\0"):
        return "unix:@" + address[1:]
    return f"unix:{address}"


def _write_ready_file(path: str, text: str) -> None:
    # Write then rename, so a reader never sees half an address.
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(partial, path)


def serve(
    address: str,
    authkey: bytes | None,
    *,
    sequential: bool = False,
    ready_file: str | None = None,
    backlog: int = 128,
) -> None:
    """Listen on *address* and answer clients until interrupted.

    With ``sequential=True`` one connection is served at a time, until it
    closes, as most hand-written Listener servers do; otherwise each
    connection gets a thread.  Once listening, the bound address (with the
    real port when *address* asked for port 0) is written to *ready_file*.

    Returns only by an exception: ``KeyboardInterrupt`` or ``SystemExit``
    (raised by a signal handler) stop it, after the listener is closed.

    Raises:
        ValueError: *address* cannot be parsed.
        OSError: the address cannot be bound.
    """
    listen_address, family = _parse_address(address)
    # No authkey here: Listener.accept() would run the handshake itself and a
    # silent client would stall the accept loop.
    listener = mpc.Listener(listen_address, family=family, backlog=backlog)
    try:
        bound = _format_address(listener.address)
        logger.info("demo backend listening on %s", bound)
        if ready_file is not None:
            _write_ready_file(ready_file, bound)
        while True:
            try:
                conn = listener.accept()
            except OSError as exc:
                # ECONNABORTED, EMFILE...: not fatal.  Pause so a persistent
                # error does not spin a core.
                logger.warning("accept failed: %s", exc)
                time.sleep(0.05)
                continue
            if sequential:
                _serve_connection(conn, authkey)
            else:
                threading.Thread(
                    target=_serve_connection,
                    args=(conn, authkey),
                    name="demo-connection",
                    daemon=True,
                ).start()
    finally:
        listener.close()


# -- process management -------------------------------------------------------


class DemoBackend:
    """A demo backend running in a child process, from :func:`spawn_demo_backend`.

    The child watches its stdin, whose other end only this object holds: if
    the parent dies, the child exits instead of lingering.
    """

    def __init__(self, proc: subprocess.Popen[bytes], address: str) -> None:
        self._proc = proc
        #: The bound address, in connbridge form: ``"127.0.0.1:43512"``,
        #: ``"[::1]:43512"`` or ``"unix:/path"``.
        self.address = address

    @property
    def pid(self) -> int:
        """Process id of the backend."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return self._proc.poll()

    def alive(self) -> bool:
        """Whether the backend process is still running."""
        return self._proc.poll() is None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the backend and wait for it; escalates to SIGKILL after *timeout*.

        Idempotent.
        """
        _stop_process(self._proc, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<DemoBackend {self.address} pid={self.pid} {state}>"


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.stdin is not None:
        # EOF on stdin asks the child to shut down cleanly.
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout / 2)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_demo_backend(
    address: str = "127.0.0.1:0",
    authkey: bytes | None = None,
    *,
    sequential: bool = False,
    python: str | None = None,
    ready_timeout: float = 15.0,
) -> DemoBackend:
    """Start a demo backend in a child process and wait until it listens.

    *address* may use port 0; :attr:`DemoBackend.address` then has the real
    port.  The key travels through the child's environment, never its argv.
    The child's stderr is the parent's.  This call blocks (for the child's
    start-up, typically well under a second): from async code run it in a
    thread.

    Raises:
        ValueError: *address* cannot be parsed, or *authkey* contains a NUL byte.
        OSError: *python* cannot be started.
        RuntimeError: the child exited before listening (e.g. address in use).
        TimeoutError: the child did not listen within *ready_timeout* seconds.
    """
    _parse_address(address)  # fail here rather than in the child
    env = os.environb.copy()
    env.pop(AUTHKEY_ENV.encode(), None)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = [package_root.encode(), *filter(None, [env.get(b"PYTHONPATH")])]
    env[b"PYTHONPATH"] = os.pathsep.encode().join(pythonpath)
    workdir = tempfile.mkdtemp(prefix="connbridge-demo-")
    ready_file = os.path.join(workdir, "ready")
    command = [python or sys.executable, "-m", "connbridge.demo", "--address", address]
    command += ["--ready-file", ready_file, "--watch-stdin"]
    if authkey is not None:
        env[AUTHKEY_ENV.encode()] = authkey
        command += ["--authkey-env", AUTHKEY_ENV]
    if sequential:
        command.append("--sequential")
    try:
        # Its own session: a Ctrl-C in the terminal goes to the foreground
        # process group, and must stop the parent (which then ends the child
        # after its calls in flight), not kill the backend under them.
        proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, start_new_session=True)
        try:
            bound = _wait_ready(proc, ready_file, ready_timeout)
        except BaseException:
            _stop_process(proc, 5.0)
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return DemoBackend(proc, bound)


def _wait_ready(proc: subprocess.Popen[bytes], ready_file: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError), open(ready_file, encoding="utf-8") as f:
            return f.read().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the demo backend exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo backend did not listen within {timeout:g}s")
        time.sleep(0.01)


# -- command line -------------------------------------------------------------


def _raise_system_exit(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def _exit_on_stdin_eof() -> None:
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    # The main thread is blocked in accept(); a signal is what interrupts it.
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m connbridge.demo --address ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m connbridge.demo",
        description="A multiprocessing.connection Listener that adds pairs and runs test ops.",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1:0",
        help="host:port, [v6]:port, unix:/path or unix:@abstract (default: %(default)s)",
    )
    parser.add_argument(
        "--authkey-env",
        metavar="VAR",
        help="read the authkey from this environment variable (default: no authkey)",
    )
    parser.add_argument("--sequential", action="store_true", help="serve one connection at a time")
    parser.add_argument("--ready-file", metavar="PATH", help="write the bound address here")
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)

    try:
        _parse_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    authkey: bytes | None = None
    if args.authkey_env is not None:
        authkey = os.environb.get(args.authkey_env.encode())
        if not authkey:
            parser.error(f"environment variable {args.authkey_env} is unset or empty")

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s demo[%(process)d] %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGTERM, _raise_system_exit)
    if args.watch_stdin:
        threading.Thread(target=_exit_on_stdin_eof, name="stdin-watch", daemon=True).start()
    try:
        serve(args.address, authkey, sequential=args.sequential, ready_file=args.ready_file)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # from the SIGTERM handler
        return 0 if exc.code == 128 + signal.SIGTERM else 1
    except OSError as exc:
        print(f"demo backend: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
