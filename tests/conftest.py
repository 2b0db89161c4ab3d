"""Shared fixtures: real Listener servers in subprocesses, under every Python we have.

Interpreters
    ``INTERPRETERS`` lists the :class:`Interpreter` ``(version, path)`` pairs found
    under ``$PYENV_ROOT/versions`` (default ``/root/.pyenv``) for 2.7 and 3.6-3.13.
    The ``interpreter`` fixture is parametrized over all of them (ids ``py2.7`` ...
    ``py3.13``, marked ``interop``); a version that is not installed is skipped
    with the path that was looked for.  The running interpreter's version is never
    skipped: it falls back to ``sys.executable``.

Backends
    ``start_backend`` (per test) and ``start_shared_backend`` (per module) are
    factories::

        backend = start_backend("listener", python=interpreter, mode="sequential")
        with backend.connect() as conn:
            assert conn.call((5, 6)) == 11

    Each returns a :class:`BackendProcess` once the server has written its bound
    address to its ready file (no fixed sleeps), and every process is stopped
    when the fixture ends.  Servers: ``"listener"``, ``"classic"`` (scripts in
    ``tests/servers``, any interpreter), ``"demo"`` (``python -m connbridge.demo``,
    the running interpreter only) or a path to a script with the same command
    line.  The key reaches the child through an environment variable.

Clients
    :meth:`BackendProcess.connect` gives a stdlib connection with bounded waits;
    the ``stdlib_client`` fixture runs ``tests/servers/stdlib_client.py`` under
    any interpreter against any address, e.g. one served by connbridge itself.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from multiprocessing import connection as mpc
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, NamedTuple, Self

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(__file__).resolve().parent / "servers"
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"

#: The interpreters the interop tests are meant to cover.
WANTED_VERSIONS: list[tuple[int, int]] = [(2, 7), *((3, minor) for minor in range(6, 14))]

#: Default key of test backends: not UTF-8, so a key mangled as text shows.
TEST_AUTHKEY = b"connbridge-test-key-\xfe\x01"

#: The environment variable that carries the key into backend processes.
AUTHKEY_ENV = "CONNBRIDGE_TEST_AUTHKEY"

#: Default bound, in seconds, of every wait in these helpers.
TIMEOUT = 10.0


class Interpreter(NamedTuple):
    """A Python interpreter: ``(version, path)`` with ``version`` = ``(major, minor)``."""

    version: tuple[int, int]
    path: str

    @property
    def id(self) -> str:
        return "py{}.{}".format(*self.version)

    @property
    def pickle_protocol(self) -> int:
        """The protocol to pickle requests in so that this interpreter can load them."""
        if self.version < (3, 0):
            return 2
        if self.version < (3, 8):
            return min(4, pickle.DEFAULT_PROTOCOL)
        return pickle.DEFAULT_PROTOCOL


def _discover() -> dict[tuple[int, int], str]:
    found: dict[tuple[int, int], tuple[int, str]] = {}
    if PYENV_VERSIONS.is_dir():
        for entry in PYENV_VERSIONS.iterdir():
            match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", entry.name)
            python = entry / "bin" / "python"
            if match and os.access(python, os.X_OK):
                version = (int(match[1]), int(match[2]))
                patch = int(match[3])
                if version not in found or found[version][0] < patch:
                    found[version] = (patch, str(python))
    paths = {version: path for version, (_, path) in found.items()}
    paths.setdefault((sys.version_info[0], sys.version_info[1]), sys.executable)
    return paths


_FOUND = _discover()

#: The running interpreter (its venv has connbridge installed).
CURRENT = Interpreter((sys.version_info[0], sys.version_info[1]), sys.executable)

#: The wanted interpreters that are installed, oldest first.
INTERPRETERS: list[Interpreter] = [
    Interpreter(version, _FOUND[version]) for version in WANTED_VERSIONS if version in _FOUND
]


def _interpreter_param(version: tuple[int, int]) -> Any:
    name = "py{}.{}".format(*version)
    if version in _FOUND:
        return pytest.param(
            Interpreter(version, _FOUND[version]), id=name, marks=pytest.mark.interop
        )
    expected = PYENV_VERSIONS / "{}.{}.*".format(*version) / "bin" / "python"
    return pytest.param(
        Interpreter(version, str(expected)),
        id=name,
        marks=[pytest.mark.interop, pytest.mark.skip(reason=f"not installed: no {expected}")],
    )


#: ``pytest.param`` per wanted version, for ``@pytest.mark.parametrize``.
INTERPRETER_PARAMS = [_interpreter_param(version) for version in WANTED_VERSIONS]


@pytest.fixture(params=INTERPRETER_PARAMS)
def interpreter(request: pytest.FixtureRequest) -> Interpreter:
    """Each wanted interpreter in turn (2.7, 3.6 ... 3.13); missing ones are skipped."""
    param: Interpreter = request.param
    return param


# -- stdlib client connections ----------------------------------------------------


def stdlib_address(address: str) -> tuple[str | tuple[str, int], str]:
    """A connbridge address as the stdlib spells it: ``(address, family)``.

    ``"h:p"`` -> ``(("h", p), "AF_INET")``, ``"[::1]:p"`` -> ``(("::1", p),
    "AF_INET6")``, ``"unix:/x"`` -> ``("/x", "AF_UNIX")``, ``"unix:@n"`` ->
    ``("\\0n", "AF_UNIX")``.
    """
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        return ("\0" + path[1:] if path.startswith("@") else path), "AF_UNIX"
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
        return (host, int(port)), "AF_INET6"
    host, _, port = address.rpartition(":")
    return (host, int(port)), "AF_INET"


class StdlibConnection:
    """A stdlib ``multiprocessing.connection.Connection`` with bounded waits.

    Requests are pickled with ``protocol`` (2 for a Python 2 server) and sent
    with ``send_bytes``; replies are read with ``recv_bytes`` after a bounded
    ``poll``, so a test fails with ``TimeoutError`` instead of hanging.
    """

    def __init__(self, conn: mpc.Connection[Any, Any], protocol: int) -> None:
        self.conn = conn
        self.protocol = protocol

    def send(self, obj: object) -> None:
        self.conn.send_bytes(pickle.dumps(obj, self.protocol))

    def recv(self, timeout: float = TIMEOUT) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"no reply within {timeout}s")
        return pickle.loads(self.conn.recv_bytes())

    def call(self, obj: object, timeout: float = TIMEOUT) -> Any:
        self.send(obj)
        return self.recv(timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stdlib_connect(
    address: str,
    authkey: bytes | None,
    *,
    protocol: int = pickle.DEFAULT_PROTOCOL,
    timeout: float = TIMEOUT,
) -> StdlibConnection:
    """Connect and authenticate as ``multiprocessing.connection.Client`` does.

    The same stdlib steps (``answer_challenge`` then ``deliver_challenge`` on
    a ``Connection``), but the connect and the wait for the challenge are
    bounded by *timeout*, and IPv6 works (``Client`` takes every tuple for IPv4).

    Raises ``TimeoutError``, ``OSError``, ``EOFError`` or
    ``multiprocessing.AuthenticationError``.
    """
    target, family = stdlib_address(address)
    sock = socket.socket(getattr(socket, family))
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.settimeout(None)  # Connection needs a blocking descriptor
        conn = mpc.Connection(sock.detach())
    finally:
        sock.close()
    try:
        if authkey is not None:
            if not conn.poll(timeout):
                raise TimeoutError(f"no challenge from {address} within {timeout}s")
            mpc.answer_challenge(conn, authkey)
            mpc.deliver_challenge(conn, authkey)
    except BaseException:
        conn.close()
        raise
    return StdlibConnection(conn, protocol)


# -- backend processes --------------------------------------------------------------


class BackendProcess:
    """A backend server in a subprocess, from ``start_backend``."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        address: str,
        authkey: bytes | None,
        python: Interpreter,
        server: str,
        log: Path,
    ) -> None:
        self.proc = proc
        #: Bound address in connbridge form: ``"127.0.0.1:43512"``, ``"[::1]:43512"``,
        #: ``"unix:/tmp/cb-x/b0.sock"`` or ``"unix:@name"``.
        self.address = address
        self.authkey = authkey
        self.python = python
        self.server = server
        self._log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def connect(
        self, authkey: bytes | EllipsisType | None = ..., *, timeout: float = TIMEOUT
    ) -> StdlibConnection:
        """A stdlib client connection, with this backend's key unless *authkey* is given.

        Requests are pickled in a protocol the backend's interpreter can load.
        """
        key = self.authkey if isinstance(authkey, EllipsisType) else authkey
        return stdlib_connect(
            self.address, key, protocol=self.python.pickle_protocol, timeout=timeout
        )

    def kill(self) -> int:
        """SIGKILL the process and reap it; returns its exit status (``-9``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self._reap(TIMEOUT)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to *timeout*, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self._reap(TIMEOUT)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit by itself; returns its exit status.

        Raises ``AssertionError`` (with the output so far) if it is still alive
        after *timeout* seconds.
        """
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self} still running after {timeout}s; output:\n{self.output()}"
            ) from None
        return self._reap(TIMEOUT)

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _reap(self, timeout: float) -> int:
        returncode = self.proc.wait(timeout)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return returncode

    def __repr__(self) -> str:
        return f"<{self.server} on {self.python.id} pid={self.pid} {self.address}>"


def _short_tmpdir() -> Path:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix="cb-", dir=base))


def _child_env(authkey: bytes | None, *, with_project: bool) -> dict[bytes, bytes]:
    env = {
        key: value
        for key, value in os.environb.items()
        # Our PYTHONPATH/PYTHONHOME would break other interpreters.
        if not key.startswith(b"PYTHON") and key != AUTHKEY_ENV.encode()
    }
    env[b"PYTHONDONTWRITEBYTECODE"] = b"1"
    env[b"PYTHONUNBUFFERED"] = b"1"
    if with_project:
        env[b"PYTHONPATH"] = bytes(ROOT)
    if authkey is not None:
        env[AUTHKEY_ENV.encode()] = authkey
    return env


class BackendFactory:
    """Starts backends and stops them all in :meth:`close`.  See ``start_backend``."""

    def __init__(self) -> None:
        self._dir = _short_tmpdir()
        self._backends: list[BackendProcess] = []

    def __call__(
        self,
        server: str = "listener",
        *,
        python: Interpreter | str | None = None,
        address: str = "127.0.0.1:0",
        authkey: bytes | None = TEST_AUTHKEY,
        mode: str | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> BackendProcess:
        """Start *server* and return once it listens.

        server: ``"listener"``, ``"classic"``, ``"demo"`` or a path to a script
            taking ``ADDRESS --authkey-env --ready-file --watch-stdin``.
        python: an :class:`Interpreter` or a path; default: the running one.
        address: ``host:port`` (port 0 picks a free port), ``[::1]:0``,
            ``unix:/path``, ``"unix:"`` for a fresh short socket path, or
            ``"unix:@"`` for a fresh abstract name.
        authkey: the key (passed through ``CONNBRIDGE_TEST_AUTHKEY``), or None.
        mode: ``"threaded"``, ``"sequential"`` or ``"classic"`` for ``listener``;
            ``"threaded"`` or ``"sequential"`` for ``demo``; nothing for ``classic``.
        args: extra command line arguments.

        Raises ``RuntimeError`` (with the output) if the server exits before
        listening, ``TimeoutError`` if it is not listening after *ready_timeout*.
        """
        if python is None:
            interp = CURRENT
        elif isinstance(python, str):
            interp = Interpreter(CURRENT.version if python == sys.executable else (0, 0), python)
        else:
            # Not isinstance(): this module may also be imported as tests.conftest,
            # which makes a second, distinct Interpreter class.
            interp = Interpreter(tuple(python.version), python.path)  # type: ignore[arg-type]
        number = len(self._backends)
        workdir = self._dir / f"b{number}"
        workdir.mkdir()
        if address == "unix:":
            address = f"unix:{self._dir}/b{number}.sock"
        elif address == "unix:@":
            address = f"unix:@connbridge-test-{self._dir.name}-{number}"
        ready = workdir / "ready"

        command = [interp.path, *self._server_command(server, mode, interp)]
        if server == "demo":
            command += ["--address", address]
        else:
            command.append(address)
        command += ["--ready-file", str(ready), "--watch-stdin", *args]
        if authkey is not None:
            command += ["--authkey-env", AUTHKEY_ENV]

        log = workdir / "output.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,  # the child exits when this closes
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(authkey, with_project=server == "demo"),
                cwd=workdir,
            )
        backend = BackendProcess(
            proc, address="", authkey=authkey, python=interp, server=server, log=log
        )
        self._backends.append(backend)
        backend.address = self._wait_ready(backend, ready, ready_timeout)
        return backend

    @staticmethod
    def _server_command(server: str, mode: str | None, interp: Interpreter) -> list[str]:
        if server in ("demo", "connbridge.demo"):
            if interp.path != sys.executable and interp.version != CURRENT.version:
                raise ValueError("the demo backend runs only on the project's interpreter")
            if mode not in (None, "threaded", "sequential"):
                raise ValueError(f"the demo has no mode {mode!r}")
            return ["-m", "connbridge.demo", *(["--sequential"] if mode == "sequential" else [])]
        script = Path(server) if server.endswith(".py") else SERVERS / f"{server}.py"
        if not script.is_file():
            raise ValueError(f"no server script {script}")
        if script.name == "classic.py":
            if mode not in (None, "classic"):
                raise ValueError("classic.py has no modes")
            return [str(script)]
        return [str(script), *(["--mode", mode] if mode else [])]

    @staticmethod
    def _wait_ready(backend: BackendProcess, ready: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                return ready.read_text().strip()
            if not backend.alive():
                backend.stop()
                raise RuntimeError(
                    f"{backend} exited with status {backend.returncode} before listening:\n"
                    + backend.output()
                )
            if time.monotonic() > deadline:
                backend.kill()
                raise TimeoutError(
                    f"{backend} not listening after {timeout}s:\n" + backend.output()
                )
            time.sleep(0.005)

    def close(self) -> None:
        """Stop every backend this factory started (SIGTERM, then SIGKILL)."""
        for backend in self._backends:
            backend.stop()
        self._backends.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def start_backend() -> Iterator[BackendFactory]:
    """Factory of backend processes that live until the end of the test."""
    factory = BackendFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def start_shared_backend() -> Iterator[BackendFactory]:
    """Factory of backend processes shared by the tests of a module."""
    factory = BackendFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A fresh directory with a short path, for AF_UNIX sockets (108-byte limit)."""
    path = _short_tmpdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- stdlib_client.py -----------------------------------------------------------------


def _request_json(value: object) -> Any:
    # The JSON notation of stdlib_client.py for tuples and bytes.
    if isinstance(value, tuple):
        return {"__tuple__": [_request_json(v) for v in value]}
    if isinstance(value, bytes):
        return {"__bytes__": binascii.hexlify(value).decode()}
    if isinstance(value, list):
        return [_request_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _request_json(v) for k, v in value.items()}
    return value


def run_stdlib_client(
    python: Interpreter,
    address: str,
    requests: Sequence[object],
    *,
    authkey: bytes | None = TEST_AUTHKEY,
    protocol: int | None = None,
    raw: bool = False,
    replies: int = 1,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Run ``tests/servers/stdlib_client.py`` under *python*; returns its JSON lines.

    Each request is a Python value (tuples and bytes survive), or with
    ``raw=True`` a string sent as raw bytes.  Each line is ``{"reply": ...}``
    or, on failure (then the last line), ``{"error": {"type", "message"}}``.
    *protocol* pickles requests with that protocol; None uses ``conn.send``.
    A client that crashes or runs past *timeout* fails the test.
    """
    command = [python.path, str(SERVERS / "stdlib_client.py"), "--replies", str(replies)]
    if authkey is not None:
        command += ["--authkey-env", AUTHKEY_ENV]
    if protocol is not None:
        command += ["--protocol", str(protocol)]
    if raw:
        command.append("--bytes")
    command.append(address)
    for request in requests:
        command.append(str(request) if raw else json.dumps(_request_json(request)))
    result = subprocess.run(
        command,
        env=_child_env(authkey, with_project=False),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    if result.returncode not in (0, 1):
        raise AssertionError(f"stdlib_client.py exited with {result.returncode}:\n{stderr}")
    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    return lines


@pytest.fixture
def stdlib_client() -> Any:
    """:func:`run_stdlib_client`, for tests that cannot import this module."""
    return run_stdlib_client
