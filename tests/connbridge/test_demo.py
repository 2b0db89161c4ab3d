"""The demo backend and the test servers, exercised with the stdlib client only.

Also the proof that the fixtures in ``tests/conftest.py`` work: every server
script starts and answers under every interpreter, and a dead server is noticed.
"""

from __future__ import annotations

import datetime
import decimal
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from connbridge import demo
from connbridge.demo import spawn_demo_backend
from tests.conftest import TEST_AUTHKEY as KEY

TIMEOUT = 10.0
SAME = object()  # "the reply is the value that was sent"


@pytest.fixture(scope="module")
def backend(start_shared_backend):
    """One threaded demo backend with the default key, shared by this module."""
    return start_shared_backend("demo")


def test_exports():
    public = {name for name in vars(demo) if not name.startswith("_")}
    assert set(demo.__all__) <= public
    assert {"DemoBackend", "main", "serve", "spawn_demo_backend"} <= set(demo.__all__)


# -- the demo's operations ------------------------------------------------------------


def test_classic_example_with_the_stdlib_client(backend):
    host, port = backend.address.rsplit(":", 1)
    with Client((host, int(port)), authkey=KEY) as conn:
        conn.send((5, 6))
        assert conn.poll(TIMEOUT)
        assert conn.recv() == 11
        conn.send(("mark", "帅哥"))
        assert conn.poll(TIMEOUT)
        assert conn.recv() == "mark帅哥"
        conn.send([[1], [2]])
        assert conn.poll(TIMEOUT)
        assert conn.recv() == [1, 2]


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        ((5, 6), 11),
        (("mark", "帅哥"), "mark帅哥"),
        ([2.5, 0.5], 3.0),
        ((b"ab", b"cd"), b"abcd"),
        ({"op": "echo", "value": {"a": [1, 2.5, None, True]}}, {"a": [1, 2.5, None, True]}),
        ({"op": "echo", "value": (b"\x00\xff", {1, 2}, frozenset({3}), 1j)}, SAME),
        ({"op": "echo", "value": decimal.Decimal("1.10")}, decimal.Decimal("1.10")),
        ({"op": "echo", "value": datetime.datetime(2024, 1, 2, 3, 4, 5)}, SAME),
        ({"op": "echo"}, None),
        ({"op": "sleep", "seconds": 0.01, "value": "done"}, "done"),
        ({"op": "sleep", "seconds": 0}, 0),
        ({"op": "tag", "tag": "t-17", "delay": 0.01}, "t-17"),
        ({"op": "tag", "tag": "t-18"}, "t-18"),
        ({"op": "version"}, list(sys.version_info[:3])),
    ],
    ids=repr,
)
def test_operations(backend, request_, reply):
    expected = request_["value"] if reply is SAME else reply
    with backend.connect() as conn:
        assert conn.call(request_) == expected


def test_pid_identifies_the_process(backend):
    with backend.connect() as conn:
        assert conn.call({"op": "pid"}) == backend.pid


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        ({"op": "raise", "type": "ValueError", "args": ["bad", 1]}, ValueError, r"\('bad', 1\)"),
        ({"op": "raise", "type": "KeyError"}, KeyError, r"\(\)"),
        ({"op": "raise", "type": "open"}, ValueError, "built-in exception"),
        ({"op": "raise", "type": "Nope"}, ValueError, "built-in exception"),
        ({"op": "raise", "type": "UnicodeDecodeError", "args": [1]}, TypeError, ""),
        ({"op": "nope"}, ValueError, "unknown op 'nope'"),
        ({}, ValueError, "unknown op None"),
        ("just a string", TypeError, "pair"),
        ((1, 2, 3), TypeError, "pair"),
        ((1, "a"), TypeError, "unsupported operand"),
        ({"op": "sleep"}, ValueError, "seconds"),
        ({"op": "sleep", "seconds": -1}, ValueError, "between 0"),
        ({"op": "sleep", "seconds": "1"}, ValueError, "number"),
        ({"op": "tag", "tag": "x", "delay": 10_000}, ValueError, "between 0"),
        ({"op": "stream", "count": 0}, ValueError, "between 1"),
        ({"op": "stream", "count": True}, ValueError, "integer"),
    ],
    ids=repr,
)
def test_bad_requests_are_answered_with_the_exception(backend, request_, error, message):
    with backend.connect() as conn:
        reply = conn.call(request_)
        assert type(reply) is error
        assert re.search(message, str(reply.args))
        # The connection is still in step: the next reply is the next answer.
        assert conn.call((20, 22)) == 42


def test_stream_sends_count_replies(backend):
    with backend.connect() as conn:
        conn.send({"op": "stream", "count": 3, "value": "v", "delay": 0.001})
        assert [conn.recv() for _ in range(3)] == [{"seq": i, "value": "v"} for i in range(3)]
        assert conn.call((1, 1)) == 2


def test_close_op_closes_from_the_server_side(backend):
    with backend.connect() as conn:
        conn.send({"op": "close"})
        assert conn.conn.poll(TIMEOUT)
        with pytest.raises(EOFError):
            conn.conn.recv_bytes()
    with backend.connect() as conn:
        assert conn.call((1, 2)) == 3


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_replies_use_the_request_protocol(backend, protocol):
    with backend.connect() as conn:
        conn.conn.send_bytes(pickle.dumps(("a", "b"), protocol))
        assert conn.conn.poll(TIMEOUT)
        data = conn.conn.recv_bytes()
    assert data[:2] == bytes([0x80, max(2, protocol)])
    assert pickle.loads(data) == "ab"


class _Smuggler:
    def __reduce__(self):
        return (os.getpid, ())


def test_request_pickles_naming_other_globals_are_refused(backend):
    with backend.connect() as conn:
        reply = conn.call(_Smuggler())
        assert isinstance(reply, pickle.UnpicklingError)
        assert "getpid" in str(reply)
        assert conn.call((1, 2)) == 3


# -- robustness -------------------------------------------------------------------------


def _read_until_closed(sock: socket.socket) -> bytes:
    """What the peer sends until it closes (a reset counts as closing)."""
    sock.settimeout(TIMEOUT)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _raw_socket(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def test_survives_a_wrong_key(backend):
    with pytest.raises(AuthenticationError):
        backend.connect(b"wrong key")
    with backend.connect(None) as conn:  # a client that skips the handshake
        conn.send((5, 6))  # taken for the answer to the challenge, and rejected
        assert conn.conn.poll(TIMEOUT)
        assert conn.conn.recv_bytes().startswith(b"#CHALLENGE#")
        assert conn.conn.poll(TIMEOUT)
        assert conn.conn.recv_bytes() == b"#FAILURE#"
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_survives_clients_that_leave_before_the_handshake(backend):
    for _ in range(5):
        _raw_socket(backend.address).close()
    with _raw_socket(backend.address) as sock:
        sock.recv(1)  # the first byte of the challenge, then gone
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11
    assert backend.alive()


def test_survives_garbage_instead_of_a_handshake(backend):
    with _raw_socket(backend.address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Our "answer" announces a 1 GB message: the demo refuses it and hangs up
        # (a timeout here would raise).
        _read_until_closed(sock)
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_an_oversized_frame_ends_only_that_connection(backend):
    with backend.connect() as conn:
        os.write(conn.conn.fileno(), struct.pack("!i", demo.MAX_MESSAGE + 1))
        assert conn.conn.poll(TIMEOUT)
        with pytest.raises(EOFError):
            conn.conn.recv_bytes()
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_a_client_gone_before_its_reply_ends_only_its_connection(backend):
    conn = backend.connect()
    conn.send({"op": "sleep", "seconds": 0.05})
    conn.close()
    with backend.connect() as conn:
        assert conn.call({"op": "sleep", "seconds": 0.2, "value": "after"}) == "after"
    assert backend.alive()


def test_without_key_garbage_frames_are_answered(start_backend):
    backend = start_backend("demo", authkey=None)
    with backend.connect() as conn:
        conn.conn.send_bytes(b"this is not a pickle")
        assert isinstance(conn.recv(), Exception)
        assert conn.call((5, 6)) == 11


# -- threaded and sequential serving ---------------------------------------------------


def test_threaded_mode_serves_connections_concurrently(start_backend):
    backend = start_backend("demo")
    with backend.connect() as busy, backend.connect() as other:
        busy.send({"op": "tag", "tag": "slow", "delay": 60})
        # Answered while the first connection's request is still running.
        assert other.call((5, 6), timeout=TIMEOUT) == 11
        assert not busy.conn.poll(0)


@pytest.mark.parametrize("server", ["demo", "listener"])
def test_sequential_mode_serves_one_connection_at_a_time(start_backend, server):
    backend = start_backend(server, mode="sequential")
    first = backend.connect()
    second_ready = threading.Event()
    second_result = []

    def connect_second():
        with backend.connect(timeout=30) as conn:
            second_ready.set()
            second_result.append(conn.call((2, 3)))

    thread = threading.Thread(target=connect_second)
    thread.start()
    try:
        assert first.call((1, 1)) == 2
        # The second handshake cannot complete while the first connection is open.
        assert not second_ready.wait(0.3)
        assert first.call((1, 2)) == 3
        assert not second_ready.is_set()
    finally:
        first.close()
    assert second_ready.wait(TIMEOUT)
    thread.join(TIMEOUT)
    assert second_result == [5]


# -- addresses and the command line ---------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("address", "pattern"),
    [
        ("127.0.0.1:0", r"127\.0\.0\.1:\d+"),
        ("localhost:0", r"127\.0\.0\.1:\d+"),
        pytest.param(
            "[::1]:0",
            r"\[::1\]:\d+",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback"),
        ),
        ("unix:", r"unix:/tmp/.*\.sock"),
        pytest.param(
            "unix:@",
            r"unix:@connbridge-test-.*",
            marks=pytest.mark.skipif(
                not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only"
            ),
        ),
    ],
)
def test_addresses(start_backend, address, pattern):
    backend = start_backend("demo", address=address)
    assert re.fullmatch(pattern, backend.address)
    assert not backend.address.endswith(":0")
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_unix_socket_file_is_removed_on_sigterm(start_backend):
    backend = start_backend("demo", address="unix:")
    path = Path(backend.address.removeprefix("unix:"))
    assert path.is_socket()
    assert backend.stop() == 0
    assert not path.exists()


def _run_demo(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "connbridge.demo", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    "address", ["nonsense", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "[::1]", "unix:"]
)
def test_cli_rejects_bad_addresses(address):
    result = _run_demo("--address", address)
    assert result.returncode == 2
    assert "expected host:port" in result.stderr or "needs a path" in result.stderr


def test_cli_refuses_a_missing_key_variable():
    env = {k: v for k, v in os.environ.items() if k != "CONNBRIDGE_NO_SUCH_VAR"}
    result = _run_demo("--authkey-env", "CONNBRIDGE_NO_SUCH_VAR", env=env)
    assert result.returncode == 2
    assert "CONNBRIDGE_NO_SUCH_VAR is unset or empty" in result.stderr


def test_cli_reports_an_address_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_demo("--address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


# -- spawn_demo_backend -------------------------------------------------------------------


def test_spawn_demo_backend():
    secret = b"spawn-test-key"
    with spawn_demo_backend("127.0.0.1:0", secret) as backend:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", backend.address)
        assert backend.alive()
        # The key is handed over in the environment, never on the command line.
        assert secret not in Path(f"/proc/{backend.pid}/cmdline").read_bytes()
        host, port = backend.address.rsplit(":", 1)
        with Client((host, int(port)), authkey=secret) as conn:
            conn.send({"op": "pid"})
            assert conn.poll(TIMEOUT)
            assert conn.recv() == backend.pid
    # Closing its stdin was enough: a clean exit, not a kill.
    assert backend.returncode == 0
    assert not backend.alive()
    backend.close()  # idempotent


CTRL_C_PARENT = """
import sys
from connbridge.demo import spawn_demo_backend
backend = spawn_demo_backend("127.0.0.1:0")
try:
    print(backend.pid, flush=True)
    sys.stdin.read()  # until the test's Ctrl-C
except KeyboardInterrupt:
    pass
backend.close()
print(backend.returncode, flush=True)
"""


def test_ctrl_c_in_a_terminal_stops_the_parent_not_the_spawned_backend():
    # The parent leads its own process group, as a shell's foreground job does;
    # Ctrl-C is SIGINT to that whole group.
    parent = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.getpgid(child) != parent.pid
        os.killpg(parent.pid, signal.SIGINT)
        # 0: the child ended cleanly when the parent closed its stdin; a child
        # hit by the SIGINT itself would exit with 130.
        out, _ = parent.communicate(timeout=TIMEOUT)
        assert out.strip() == "0"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_spawn_demo_backend_sequential_on_a_unix_socket(short_tmp_path):
    path = short_tmp_path / "demo.sock"
    backend = spawn_demo_backend(f"unix:{path}", None, sequential=True)
    try:
        assert backend.address == f"unix:{path}"
        with Client(str(path)) as conn:
            conn.send(("mark", "帅哥"))
            assert conn.poll(TIMEOUT)
            assert conn.recv() == "mark帅哥"
    finally:
        backend.close()
    assert not path.exists()


def test_spawn_demo_backend_reports_a_failed_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited with status 1"):
            spawn_demo_backend(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="expected host:port"):
        spawn_demo_backend("no port")


# -- the servers in tests/servers, under every interpreter -------------------------------


@pytest.mark.parametrize("mode", ["threaded", "sequential", "classic"])
def test_listener_script_answers(start_backend, interpreter, mode):
    backend = start_backend("listener", python=interpreter, mode=mode)
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11
        assert conn.call(("mark", "帅哥")) == "mark帅哥"
        if mode == "classic":
            return
        assert conn.call({"op": "version"})[:2] == list(interpreter.version)
        assert conn.call({"op": "pid"}) == backend.pid
        assert conn.call({"op": "echo", "value": [1, "x", None]}) == [1, "x", None]
        assert conn.call({"op": "tag", "tag": "t1", "delay": 0.001}) == "t1"
        assert conn.call({"op": "sleep", "seconds": 0.001, "value": "v"}) == "v"
        error = conn.call({"op": "raise", "type": "KeyError", "args": ["k"]})
        assert type(error) is KeyError
        assert error.args == ("k",)
        assert type(conn.call({"op": "nope"})) is ValueError
        conn.send({"op": "stream", "count": 2})
        assert [conn.recv(), conn.recv()] == [{"seq": 0, "value": None}, {"seq": 1, "value": None}]
        conn.send({"op": "close"})
        assert conn.conn.poll(TIMEOUT)
        with pytest.raises(EOFError):
            conn.conn.recv_bytes()


def test_listener_script_without_key_on_a_unix_socket(start_backend, interpreter):
    backend = start_backend("listener", python=interpreter, authkey=None, address="unix:")
    assert backend.address.startswith("unix:/")
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_listener_script_survives_bad_clients(start_backend, interpreter):
    backend = start_backend("listener", python=interpreter)
    with pytest.raises(AuthenticationError):
        backend.connect(b"wrong key")
    _raw_socket(backend.address).close()
    with backend.connect() as conn:
        assert conn.call((5, 6)) == 11


def test_classic_script_survives_a_clean_eof(start_backend, interpreter):
    backend = start_backend("classic", python=interpreter)
    for unique in (1000, 1001):
        with backend.connect() as conn:
            assert conn.call((unique, 0)) == unique
    assert backend.alive()


@pytest.mark.parametrize("request_", [("a", 1), {"op": "pid"}], ids=["bad-operands", "not-a-pair"])
def test_classic_script_dies_on_any_other_error(start_backend, interpreter, request_):
    backend = start_backend("classic", python=interpreter)
    with backend.connect() as conn:
        conn.send(request_)
        # The server dies instead of answering: the client sees the connection end.
        assert conn.conn.poll(TIMEOUT)
        with pytest.raises((EOFError, ConnectionResetError)):
            conn.conn.recv_bytes()
    assert backend.wait_exit() == 1
    assert not backend.alive()
    assert re.search(r"(TypeError|ValueError)", backend.output())


def test_classic_script_dies_on_a_wrong_key(start_backend, interpreter):
    backend = start_backend("classic", python=interpreter)
    with pytest.raises(AuthenticationError):
        backend.connect(b"wrong key")
    assert backend.wait_exit() == 1
    assert "AuthenticationError" in backend.output()


def test_stdlib_client_script_against_the_demo(backend, interpreter, stdlib_client):
    lines = stdlib_client(
        interpreter,
        backend.address,
        [(5, 6), ("mark", "帅哥"), {"op": "raise", "type": "KeyError", "args": ["k"]}],
    )
    assert lines == [
        {"reply": 11},
        {"reply": "mark帅哥"},
        {"reply": {"__exception__": "KeyError", "args": ["k"]}},
    ]


def test_stdlib_client_script_reports_errors(backend, interpreter, stdlib_client):
    lines = stdlib_client(interpreter, backend.address, [(5, 6)], authkey=b"wrong key")
    assert lines == [
        {"error": {"type": "AuthenticationError", "message": "digest sent was rejected"}}
    ]


def test_stdlib_client_script_sends_raw_bytes(start_backend, interpreter, stdlib_client):
    backend = start_backend("demo", authkey=None)
    lines = stdlib_client(interpreter, backend.address, ["not a pickle"], authkey=None, raw=True)
    assert len(lines) == 1
    # The demo's reply is a pickled exception, shown as bytes by the raw client.
    reply = bytes.fromhex(lines[0]["reply"]["__bytes__"])
    assert isinstance(pickle.loads(reply), pickle.UnpicklingError)


# -- the fixtures themselves -----------------------------------------------------------


def test_fixture_kill_and_stop(start_backend):
    killed = start_backend("listener")
    stopped = start_backend("listener", mode="sequential")
    assert killed.alive()
    assert stopped.alive()
    assert killed.kill() == -9
    assert not killed.alive()
    assert stopped.stop() == 0  # the script exits cleanly on SIGTERM
    with pytest.raises(ConnectionRefusedError):
        stopped.connect()


def test_fixture_reports_a_server_that_cannot_start(start_backend):
    first = start_backend("listener", address="unix:")
    with pytest.raises(RuntimeError, match="exited with status 1 before listening"):
        start_backend("listener", address=first.address)
