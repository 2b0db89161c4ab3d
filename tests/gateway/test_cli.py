"""The command line, run as a real process: configuration errors, the loopback rule,
--demo, TLS, and a graceful SIGTERM with a call in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import key_file, sha256_hex, wait_until

from gateway.app import package_version
from gateway.cli import exposure_problem, is_loopback_host
from gateway.settings import Settings

pytestmark = pytest.mark.timeout(90)

LISTENING = re.compile(r"connbridge gateway listening on (https?)://127\.0\.0\.1:(\d+)")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONNBRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or child_env(),
        check=False,
    )


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            match = LISTENING.search(text)
            if match and not self.url:
                self.url = f"{match[1]}://127.0.0.1:{match[2]}"
                self._listening.set()

    async def listening(self, timeout: float = 30) -> str:
        waiter = asyncio.create_task(self._listening.wait())
        done, _ = await asyncio.wait(
            {waiter, self._reader}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if waiter not in done:
            waiter.cancel()
            raise AssertionError("the gateway did not listen:\n" + self.output())
        return self.url

    async def wait(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)


#: The console script that ``make demo`` runs (installed next to the interpreter).
CONSOLE_SCRIPT = Path(sys.executable).parent / "connbridge-gateway"


@contextlib.asynccontextmanager
async def gateway_process(
    *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> AsyncIterator[GatewayProcess]:
    proc = await asyncio.create_subprocess_exec(
        *(command or [sys.executable, "-m", "gateway"]),
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env or child_env(),
    )
    running = GatewayProcess(proc)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
        await running.wait()


def write_config(tmp_path: Path, backend, **gateway: object) -> Path:
    lines = ["[gateway]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in gateway.items()]
    lines += [
        "[backends.adder]",
        f'address = "{backend.address}"',
        f'authkey_file = "{key_file(tmp_path, backend.authkey)}"',
    ]
    path = tmp_path / "connbridge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def test_bad_config_exits_2_naming_file_and_key(tmp_path):
    path = tmp_path / "connbridge.toml"
    path.write_text('[backends.adder]\naddress = "127.0.0.1:nope"\ntimeout = 0\n')
    result = run_cli("--config", str(path), "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"connbridge-gateway: error: {path}: backends.adder.address: invalid port" in lines[0]
    assert any(f"{path}: backends.adder.timeout: " in line for line in lines)
    assert "listening" not in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment_and_missing_backends(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[gateway]\nport = 0\n")
    result = run_cli(env=child_env(CONNBRIDGE_CONFIG=str(path)))
    assert result.returncode == 2
    # The file was given: the message says what it lacks, not to give one.
    assert f"{path} configures no backend: add a [backends.NAME] table" in result.stderr
    assert "pass --config" not in result.stderr
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert f"{path} configures no backend" in result.stderr
    result = run_cli(env=child_env())
    assert result.returncode == 2
    assert "no backends configured: pass --config PATH" in result.stderr
    result = run_cli("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml: cannot read the file" in result.stderr


def test_refuses_non_loopback_without_keys(tmp_path, demo):
    path = write_config(tmp_path, demo)
    for host in ("0.0.0.0", "::", "192.0.2.10", "gateway.example"):
        result = run_cli("--config", str(path), "--host", host, "--port", "0")
        assert result.returncode == 2, result.stderr
        assert f"refusing to listen on {host}" in result.stderr
        assert "allow_anonymous" in result.stderr
    # The environment can set the host too; the rule still holds.
    result = run_cli("--config", str(path), env=child_env(CONNBRIDGE_GATEWAY__HOST="0.0.0.0"))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_loopback_hosts():
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "example.com"):
        assert not is_loopback_host(host), host


def test_port_in_use_exits_1(tmp_path, demo):
    path = write_config(tmp_path, demo)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--config", str(path), "--port", str(port))
    assert result.returncode == 1, result.stderr


async def test_sigterm_finishes_the_call_in_flight(tmp_path, demo):
    path = write_config(tmp_path, demo, shutdown_grace=10, log_format="json")
    async with gateway_process("--config", str(path), "--port", "0") as gateway:
        url = await gateway.listening()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            call = asyncio.create_task(
                client.post(
                    "/compute",
                    json={"payload": {"op": "sleep", "seconds": 1.0, "value": "done"}},
                    headers={"X-Request-ID": "in-flight-1"},
                )
            )

            async def in_flight() -> bool:
                listing = (await client.get("/backends")).json()
                return listing["backends"][0]["stats"]["in_use"] == 1

            await wait_until(in_flight, what="the call to be in flight")
            gateway.proc.send_signal(signal.SIGTERM)
            response = await call
            assert response.status_code == 200
            assert response.json()["result"] == "done"
            assert await gateway.wait() == 0, gateway.output()
    records = [json.loads(line) for line in gateway.lines if line.startswith("{")]
    access = [r for r in records if r.get("request_id") == "in-flight-1"]
    assert len(access) == 1
    assert access[0]["status"] == 200
    assert access[0]["backend"] == "adder"
    assert access[0]["path"] == "/compute"
    assert access[0]["duration_ms"] >= 1000
    assert all(line.startswith("{") for line in gateway.lines), gateway.output()
    assert demo.authkey.decode(errors="replace") not in gateway.output()


async def test_demo_serves_the_quick_start():
    # What `make demo` runs: the console script with --demo.
    assert CONSOLE_SCRIPT.exists(), "the project is not installed in this environment"
    async with gateway_process("--demo", "--port", "0", command=[str(CONSOLE_SCRIPT)]) as gateway:
        url = await gateway.listening()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.post("/compute", json={"payload": [5, 6]})
            assert response.json() == {
                "result": 11,
                "backend": "demo",
                "elapsed_ms": response.json()["elapsed_ms"],
            }
            response = await client.post("/compute", json={"payload": ["mark", "帅哥"]})
            assert response.json()["result"] == "mark帅哥"
            listing = (await client.get("/backends")).json()["backends"]
            assert [(b["name"], b["default"]) for b in listing] == [("demo", True)]
            assert listing[0]["addresses"][0].startswith("unix:")
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0, gateway.output()


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1: ``(cert, key)`` paths."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_tls(tmp_path, demo, certificate):
    cert, key = certificate
    path = write_config(tmp_path, demo, tls_certfile=str(cert), tls_keyfile=str(key))
    async with gateway_process("--config", str(path), "--port", "0") as gateway:
        url = await gateway.listening()
        assert url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=url, timeout=30, verify=context) as client:
            response = await client.post("/compute", json={"payload": [5, 6]})
            assert response.json()["result"] == 11
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0


def test_exposure_rule():
    backends = {"a": {"address": "unix:/a"}}
    open_settings = Settings(backends=backends)
    assert exposure_problem(open_settings, "127.0.0.1") is None
    assert "refusing to listen on 0.0.0.0" in (exposure_problem(open_settings, "0.0.0.0") or "")
    keyed = Settings(backends=backends, auth={"keys": [{"name": "k", "sha256": "0" * 64}]})
    assert exposure_problem(keyed, "0.0.0.0") is None
    anonymous = Settings(backends=backends, gateway={"allow_anonymous": True})
    assert exposure_problem(anonymous, "0.0.0.0") is None


async def test_api_keys_through_the_command_line(tmp_path, demo):
    path = write_config(tmp_path, demo)
    with path.open("a") as f:
        f.write(f'[[auth.keys]]\nname = "ci"\nsha256 = "{sha256_hex("ci-key")}"\n')
    async with gateway_process("--config", str(path), "--port", "0") as gateway:
        url = await gateway.listening()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.post("/compute", json={"payload": [1, 2]})).status_code == 401
            response = await client.post(
                "/compute", json={"payload": [1, 2]}, headers={"Authorization": "Bearer ci-key"}
            )
            assert response.json()["result"] == 3
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0
    assert "ci-key" not in gateway.output()


def test_the_server_process_tunes_the_garbage_collector(request: pytest.FixtureRequest) -> None:
    import gc

    from gateway.cli import _tune_gc

    threshold = gc.get_threshold()
    request.addfinalizer(lambda: (gc.unfreeze(), gc.set_threshold(*threshold)))
    _tune_gc()
    # What was alive at start-up is no longer scanned; young collections are rarer.
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (20_000, *threshold[1:])


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"connbridge-gateway {package_version()}"
    assert package_version() != "0"  # the project is installed (make install)
