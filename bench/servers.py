"""The processes a benchmark run needs, and the small tools to drive and observe them.

Every server runs in a child process of its own: the threaded demo backend
(:func:`connbridge.demo.spawn_demo_backend`), the gateway with its ceiling
route (:mod:`bench.ceiling_app`), the gateway as its command line starts it
(``python -m gateway``), the naive bridge (:mod:`bench.naive_app`), the
WebSocket echo server (:mod:`bench.echo_ws`) and a manager
(:mod:`bench.manager_server`). Each is a context manager that
waits for readiness with a bounded deadline (a ready file with the bound
port, then ``GET /healthz`` or ``/readyz``) and ends the process it started,
by its PID, on the way out; a server that fails to start raises
:class:`ServerError` with the tail of its log.

Children get the environment without ``CONNBRIDGE_*`` variables, so that a
developer's own gateway settings cannot leak into a run; the demo backend's
key travels in ``BENCH_DEMO_AUTHKEY``, never in argv.

Sizes are read from the environment by :func:`knob`: ``BENCH_<NAME>``, or
with ``BENCH_QUICK=1`` a small default for a smoke run.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from connbridge.demo import spawn_demo_backend

__all__ = [
    "AUTHKEY_ENV",
    "HOST",
    "ROOT",
    "Backend",
    "Relay",
    "Server",
    "ServerError",
    "classic_backend",
    "cli_gateway",
    "cpu_seconds",
    "demo_backend",
    "echo_server",
    "find_wrk",
    "gateway",
    "http_call",
    "knob",
    "latency_relay",
    "manager_backend",
    "naive_bridge",
    "raise_open_files",
    "read_ready_file",
    "rss_mib",
    "workdir",
    "write_ready_file",
    "wrk_version",
]

ROOT: Final = Path(__file__).resolve().parent.parent
#: Environment variable carrying the demo backend's key to the children.
AUTHKEY_ENV: Final = "BENCH_DEMO_AUTHKEY"
HOST: Final = "127.0.0.1"
#: Longest wait for a child to listen and answer its health check.
READY_TIMEOUT: Final = 30.0
#: Longest wait for a child to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 10.0
_LOG_TAIL: Final = 3000


class ServerError(RuntimeError):
    """A benchmark server did not start, or died; the message ends with its log."""


def knob(name: str, full: float, quick: float) -> float:
    """``BENCH_<name>`` from the environment, else ``quick`` under ``BENCH_QUICK=1``, else ``full``.

    Raises:
        ValueError: the variable is set but is not a positive number.
    """
    text = os.environ.get(f"BENCH_{name}")
    if text is None:
        return quick if os.environ.get("BENCH_QUICK") == "1" else full
    value = float(text)
    if not value > 0:
        raise ValueError(f"BENCH_{name} must be a positive number, not {text!r}")
    return value


# -- files and processes -------------------------------------------------------------


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private temporary directory for configs, bodies, ready files and logs."""
    path = Path(tempfile.mkdtemp(prefix="connbridge-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_ready_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a rename, so a reader never sees half of it."""
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(partial, path)


def read_ready_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    """Wait (at most :data:`READY_TIMEOUT`) for ``proc`` to write ``path``; return its text.

    Raises:
        ServerError: the process exited first, or the deadline passed.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with contextlib.suppress(FileNotFoundError):
            return path.read_text(encoding="utf-8").strip()
        if proc.poll() is not None:
            raise ServerError(_failure(f"exited with status {proc.returncode}", log))
        if time.monotonic() > deadline:
            raise ServerError(_failure(f"did not listen within {READY_TIMEOUT:g} s", log))
        time.sleep(0.02)


def _failure(what: str, log: Path) -> str:
    try:
        tail = log.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL:]
    except OSError:
        tail = "(no log)"
    return f"{log.stem} {what}; its log ends with:\n{tail}"


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONNBRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@dataclass(frozen=True)
class Server:
    """A running server: its process, base URL (``http://127.0.0.1:PORT``) and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def check_alive(self) -> None:
        """Raise :class:`ServerError` (with the log) if the process has exited."""
        if self.proc.poll() is not None:
            raise ServerError(_failure(f"exited with status {self.proc.returncode}", self.log))


@contextlib.contextmanager
def _child(
    name: str, argv: Sequence[str], directory: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = directory / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log
    finally:
        _stop(proc)


def _wait_http(server: Server, path: str) -> None:
    """Poll ``GET path`` until it answers 200, within :data:`READY_TIMEOUT`.

    Raises:
        ServerError: the process exited, or no 200 came before the deadline.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            status, body = http_call(server.url, "GET", path, timeout=2.0)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        time.sleep(0.05)
    raise ServerError(_failure(f"GET {path} failed until the deadline ({last})", server.log))


def http_call(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection; returns the status and the body.

    Raises:
        OSError: the connection failed or timed out.
    """
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` of ``/proc/<pid>/status``).

    Raises:
        OSError: the process is gone.
        RuntimeError: the file has no ``VmRSS`` line (a zombie).
    """
    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(r"^VmRSS:\s+(\d+) kB$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"process {pid} has no VmRSS (exited?)")
    return int(match.group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far, in seconds (``/proc/<pid>/stat``).

    Raises:
        OSError: the process is gone.
    """
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name (field 2) may hold spaces: count from the ")" after it.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to ``wanted`` (at most the hard limit).

    Children started afterwards inherit it. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# -- the servers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A backend: its ``host:port`` address, key (hex text, so env-safe) and process.

    ``proc`` is the server's process when the bench started it as a plain
    child (the classic server); the demo backend's is managed by
    :func:`~connbridge.demo.spawn_demo_backend`.
    """

    address: str
    authkey: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def stdlib_address(self) -> tuple[str, int]:
        host, port = self.address.rsplit(":", 1)
        return host, int(port)

    def via(self, relay: Relay) -> Backend:
        """The same backend, reached through ``relay``."""
        return Backend(relay.address, self.authkey, self.proc)

    def check_alive(self) -> None:
        """Raise :class:`ServerError` if the bench started this backend and it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"the backend at {self.address} exited with {self.proc.returncode}")


@contextlib.contextmanager
def demo_backend() -> Iterator[Backend]:
    """The threaded demo backend on a free loopback port, with a random key."""
    key = secrets.token_hex(16)
    with spawn_demo_backend(f"{HOST}:0", key.encode("ascii")) as backend:
        yield Backend(backend.address, key)


@contextlib.contextmanager
def manager_backend(directory: Path) -> Iterator[Backend]:
    """The bench's manager (:mod:`bench.manager_server`) on a free loopback port, random key."""
    key = secrets.token_hex(16)
    ready = directory / "manager.ready"
    argv = ["-m", "bench.manager_server", f"{HOST}:0", "--ready-file", str(ready)]
    with _child("manager", argv, directory, _child_env(**{AUTHKEY_ENV: key})) as (proc, log):
        yield Backend(read_ready_file(ready, proc, log), key)


#: The seed's classic one-connection server, as the test suite runs it (verbatim loop).
CLASSIC_SCRIPT: Final = ROOT / "tests" / "servers" / "classic.py"


@contextlib.contextmanager
def classic_backend(directory: Path) -> Iterator[Backend]:
    """The classic Listener server (``tests/servers/classic.py``) on a free port, random key.

    It serves one connection at a time, answers ``(x, y)`` with ``x + y`` and
    exits on any error but a clean end of file: a bench row that breaks the
    rules of such a server shows up as :class:`ServerError` (its
    ``check_alive``), not as a figure.
    """
    key = secrets.token_hex(16)
    ready = directory / "classic.ready"
    ready.unlink(missing_ok=True)
    argv = [str(CLASSIC_SCRIPT), f"{HOST}:0", "--authkey-env", AUTHKEY_ENV]
    argv += ["--ready-file", str(ready)]
    with _child("classic", argv, directory, _child_env(**{AUTHKEY_ENV: key})) as (proc, log):
        yield Backend(read_ready_file(ready, proc, log), key, proc)


def write_config(
    directory: Path,
    backend: Backend,
    *,
    log_level: str,
    name: str = "gateway",
    options: str = "",
) -> Path:
    """The gateway's TOML configuration for a run: one backend ``demo``, no API keys.

    ``max_body_bytes`` is raised so the 10 MiB ``$bytes`` row (about 14 MiB
    of JSON) fits; every other setting is the default. ``options`` are more
    TOML lines for the backend's table (the ``remote`` rows set
    ``max_connections`` and ``pipeline``); the file is ``<name>.toml``.
    """
    path = directory / f"{name}.toml"
    path.write_text(
        f"""\
[gateway]
host = "{HOST}"
max_body_bytes = {64 * 1024 * 1024}
shutdown_grace = 1.0
log_level = "{log_level}"

[backends.demo]
address = "{backend.address}"
authkey_env = "{AUTHKEY_ENV}"
call_timeout = 60.0
# The bench sends only operations that answer once; the demo's own
# declaration (replies = "many", for its stream operation) would measure a
# handshake per call instead of the pool.
replies = "one"
{options}""",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def gateway(
    config: Path, backend: Backend, directory: Path, *, name: str = "gateway"
) -> Iterator[Server]:
    """The gateway app plus the ceiling route, under uvicorn as the CLI configures it.

    ``name`` names its ready file and log, so that several can run at once.
    """
    ready = directory / f"{name}.ready"
    ready.unlink(missing_ok=True)  # from an earlier gateway of the same name
    argv = ["-m", "bench.ceiling_app", "--config", str(config), "--ready-file", str(ready)]
    env = _child_env(**{AUTHKEY_ENV: backend.authkey})
    with _child(name, argv, directory, env) as (proc, log):
        server = Server(proc, "http://" + read_ready_file(ready, proc, log), log)
        _wait_http(server, "/readyz")  # 200 only once the demo backend answers
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def cli_gateway(config: Path, backend: Backend, directory: Path) -> Iterator[Server]:
    """``python -m gateway --config ...``: the gateway exactly as users start it.

    The CLI cannot report a port it picked without logging at info level,
    so a free port is found first by binding port 0; if another process
    takes it meanwhile, the start is retried (three attempts).

    Raises:
        ServerError: the gateway did not start.
    """
    env = _child_env(**{AUTHKEY_ENV: backend.authkey})
    for attempt in range(3):
        port = _free_port()
        argv = ["-m", "gateway", "--config", str(config), "--host", HOST, "--port", str(port)]
        with _child(f"cli-gateway-{attempt}", argv, directory, env) as (proc, log):
            server = Server(proc, f"http://{HOST}:{port}", log)
            try:
                _wait_http(server, "/readyz")
            except ServerError:
                if proc.poll() is None or attempt == 2:
                    raise
                continue  # exited: most likely the port was taken; try another
            yield server
            return
    raise AssertionError("unreachable")


@contextlib.contextmanager
def naive_bridge(backend: Backend, directory: Path) -> Iterator[Server]:
    """The naive FastAPI bridge (:mod:`bench.naive_app`) in front of ``backend``."""
    ready = directory / "naive.ready"
    argv = ["-m", "bench.naive_app", "--backend", backend.address, "--ready-file", str(ready)]
    env = _child_env(**{AUTHKEY_ENV: backend.authkey})
    with _child("naive", argv, directory, env) as (proc, log):
        server = Server(proc, "http://" + read_ready_file(ready, proc, log), log)
        _wait_http(server, "/healthz")
        yield server


@contextlib.contextmanager
def echo_server(directory: Path) -> Iterator[Server]:
    """The plain ``websockets`` echo server (:mod:`bench.echo_ws`); ``url`` is ``ws://...``."""
    ready = directory / "echo.ready"
    argv = ["-m", "bench.echo_ws", "--ready-file", str(ready)]
    with _child("echo-ws", argv, directory, _child_env()) as (proc, log):
        yield Server(proc, "ws://" + read_ready_file(ready, proc, log), log)


@dataclass(frozen=True)
class Relay:
    """A running latency relay (:mod:`bench.relay`): its process and ``host:port``."""

    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def cpu_seconds(self) -> float:
        """The relay's user plus system CPU time so far; raises ServerError if it has exited."""
        if self.proc.poll() is not None:
            raise ServerError(_failure(f"exited with status {self.proc.returncode}", self.log))
        return cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def latency_relay(
    target: str, directory: Path, *, delay_ms: float = 0.5, name: str = "relay"
) -> Iterator[Relay]:
    """A latency relay to ``target`` (``host:port``): ``delay_ms`` each way (:mod:`bench.relay`).

    ``name`` names its ready file and log, so that several can run at once.
    """
    ready = directory / f"{name}.ready"
    ready.unlink(missing_ok=True)
    argv = ["-m", "bench.relay", "--target", target, "--ready-file", str(ready)]
    argv += ["--delay-ms", repr(delay_ms)]
    with _child(name, argv, directory, _child_env()) as (proc, log):
        yield Relay(proc, read_ready_file(ready, proc, log), log)


# -- wrk ----------------------------------------------------------------------------


def find_wrk() -> str:
    """The path of ``wrk``, installed with apt-get when missing and running as root.

    Raises:
        RuntimeError: wrk is missing and cannot be installed here.
    """
    found = shutil.which("wrk")
    if found is not None:
        return found
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "the HTTP rows need wrk (https://github.com/wg/wrk); install it, "
            "e.g. 'sudo apt-get install -y wrk' on Debian or Ubuntu, and run again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
    print("wrk is missing: installing it with apt-get", file=sys.stderr)
    if subprocess.run(install, env=env, timeout=600, check=False).returncode != 0:
        # A fresh container often has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, timeout=600, check=False)
        subprocess.run(install, env=env, timeout=600, check=False)
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("apt-get could not install wrk; install it by hand and run again")
    return found


def wrk_version(wrk: str) -> str:
    """``wrk -v``'s first line, e.g. ``wrk debian/4.1.0-3+b2 [epoll] ...``."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0] if lines else "unknown"
