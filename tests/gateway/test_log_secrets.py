"""No key in any log line, at ``--log-level debug``; a forged newline is escaped.

The real gateway process (``python -m gateway --log-level debug``) serves a
real demo backend with an authkey and two API keys. Every route is called
with keys in the ``Authorization`` header and in ``access_token`` query
parameters (the right keys, a scoped one and an unknown one, over HTTP and
WebSocket, and in a malformed request); then every configuration mistake
that could put a secret where a name belongs is started. The output of all
of it is searched for each key in raw, hex and base64 forms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import signal
from pathlib import Path

import httpx
import pytest
from gateway_support import key_file, sha256_hex
from process_support import child_env, gateway_process, run_cli
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

pytestmark = pytest.mark.timeout(120)

AUTHKEY = secrets.token_urlsafe(24).encode()
KEY = secrets.token_urlsafe(24)
SCOPED = secrets.token_urlsafe(24)
UNKNOWN = secrets.token_urlsafe(24)
SECRETS = {
    "authkey": AUTHKEY,
    "key": KEY.encode(),
    "scoped": SCOPED.encode(),
    "unknown": UNKNOWN.encode(),
}


def forms(secret: bytes) -> list[str]:
    """The ways a secret may show in a log: as it is, hex, base64 (standard, URL-safe, unpadded)."""
    out = [secret.decode(), secret.hex(), secret.hex().upper()]
    for encoded in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        out += [encoded.decode(), encoded.decode().rstrip("=")]
    return out


def leaks(output: str) -> list[tuple[str, str]]:
    return [
        (name, form) for name, secret in SECRETS.items() for form in forms(secret) if form in output
    ]


def config(tmp_path: Path, address: str, mistake: dict[str, str] | None = None) -> Path:
    """Backends ``adder`` and ``other`` at ``address``; ``mistake`` replaces keys of ``adder``."""
    keyfile = key_file(tmp_path, AUTHKEY)
    adder = {"address": address, "authkey_file": keyfile}
    if mistake and "address" not in mistake:
        del adder["authkey_file"]  # the mistake is where the key comes from
    adder |= mistake or {}
    lines = ["[backends.adder]"] + [f'{k} = "{v}"' for k, v in adder.items()]
    lines += ["[backends.other]", f'address = "{address}"', f'authkey_file = "{keyfile}"']
    lines += ["[[auth.keys]]", 'name = "ops"', f'sha256 = "{sha256_hex(KEY)}"']
    lines += ["[[auth.keys]]", 'name = "scoped"', f'sha256 = "{sha256_hex(SCOPED)}"']
    lines += ['backends = ["adder"]']
    path = tmp_path / f"connbridge-{secrets.token_hex(4)}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def exercise(url: str, port: int) -> None:
    http_routes = [
        "/healthz",
        "/readyz",
        "/backends",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/nope",
    ]
    bodies = {
        "/compute": {"payload": [1, 2]},
        "/backends/adder/compute": {"payload": [1, 2]},
        "/backends/other/compute": {"payload": [1, 2]},
        "/compute/batch": {
            "requests": [{"payload": [1, 2]}, {"backend": "other", "payload": [3, 4]}]
        },
    }
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        for key in (KEY, SCOPED, UNKNOWN):
            for auth in (f"Bearer {key}", f"bearer  {key}", key):
                for route in http_routes:
                    await client.get(route, headers={"Authorization": auth})
                for route, body in bodies.items():
                    await client.post(route, json=body, headers={"Authorization": auth})
            for query in (
                f"access_token={key}",
                f"x=1&access%5Ftoken={key}",
                f"%61ccess_token={key}&a=b",
            ):
                for route in http_routes:
                    await client.get(f"{route}?{query}")
                for route, body in bodies.items():
                    await client.post(f"{route}?{query}", json=body)
            # A key in a malformed request (the NUL makes the parser refuse it).
            await raw_request(
                port,
                f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {key}\r\nX: \x00\r\n\r\n".encode(),
            )
        # A forged line in the path of a request without a key.
        await client.get("/healthz%0a2099-01-01 00:00:00,000 INFO forged: line")
    ws_url = url.replace("http", "ws", 1)
    for key in (KEY, SCOPED, UNKNOWN):
        targets = [
            ("/ws", {"Authorization": f"Bearer {key}"}),
            (f"/ws?access_token={key}", {}),
            (f"/ws?result_format=json&access%5Ftoken={key}", {}),
            (f"/ws/session/adder?access_token={key}", {}),
            (f"/ws/session/other?access_token={key}", {}),
            (f"/no-such-socket?access_token={key}", {"Authorization": f"Bearer {key}"}),
        ]
        for path, headers in targets:
            with contextlib.suppress(InvalidStatus, WebSocketException, OSError):
                async with connect(
                    ws_url + path, additional_headers=headers, open_timeout=10
                ) as ws:
                    await ws.send(
                        '{"id": 1, "payload": [1, 2]}' if path.startswith("/ws?") else "[1, 2]"
                    )
                    await asyncio.wait_for(ws.recv(), 10)


async def test_no_key_in_the_debug_log_of_the_gateway(start_backend, tmp_path):
    demo = start_backend("demo", authkey=AUTHKEY)
    path = config(tmp_path, demo.address)
    async with gateway_process("--config", str(path), "--port", "0", "--log-level", "debug") as gw:
        url = await gw.listening()
        port = int(url.rsplit(":", 1)[1])
        await exercise(url, port)
        gw.proc.send_signal(signal.SIGTERM)
        assert await gw.wait() == 0
    output = gw.output()
    # The run did log at debug level, uvicorn's and websockets' lines included.
    assert " DEBUG " in output
    assert "websockets" in output or "< GET" in output, output[-3000:]
    assert leaks(output) == [], [
        line for line in output.splitlines() if any(f in line for _, f in leaks(line))
    ]
    assert "<redacted>" in output
    # The forged line is on the request's own line, escaped.
    assert "/healthz\\x0a2099-01-01 00:00:00,000 INFO forged: line" in output
    assert not any(line.startswith("2099-01-01") for line in output.splitlines())


@pytest.mark.parametrize(
    ("backend", "where"),
    [
        ({"authkey_env": AUTHKEY.decode()}, "backends.adder.authkey_env"),
        ({"authkey_file": AUTHKEY.decode()}, "backends.adder.authkey_file"),
        ({"authkey_file": "/" + AUTHKEY.decode()}, "backends.adder.authkey_file"),
        ({"address": AUTHKEY.decode()}, "backends.adder.address"),
        ({"address": "127.0.0.1:" + AUTHKEY.decode()}, "backends.adder.address"),
        ({"address": "/" + AUTHKEY.decode()}, "backends.adder.address"),
    ],
)
def test_configuration_errors_never_echo_a_secret(start_shared_backend, tmp_path, backend, where):
    path = config(tmp_path, "127.0.0.1:1", backend)
    if "authkey_file" in backend:
        text = path.read_text().replace(f'authkey_file = "{key_file(tmp_path, AUTHKEY)}"\n', "", 1)
        path.write_text(text)
    result = run_cli("--config", str(path), "--port", "0", "--log-level", "debug")
    output = result.stdout + result.stderr
    if where:
        assert result.returncode == 2, output
        assert f"{where}" in output
    assert leaks(output) == []


# Keys of every shape the usual generators make, the unlucky ones included: a
# urlsafe key that happens to have no digit (about 1 in 230 of 32 characters),
# one with no upper-case letter, a lower-case hex key, an upper-case one.
KEY_SHAPES = [
    "GYYcU_LnJLfEBfXHhPHNqhxxFAVDPwxD",
    "gyycu-lnjlfe8fxhhp2nqhxxfavdpwxd",
    "3f9a0c4e7b21d58f6a0e9c3b7d14f2a6",
    "3F9A0C4E7B21D58F6A0E9C3B7D14F2A6",
    "QWERTYUIOPASDFGHJKLZXCVBNMQWERTY",
]


@pytest.mark.parametrize("shape", KEY_SHAPES)
@pytest.mark.parametrize("where", ["authkey_file", "authkey_env"])
def test_no_shape_of_key_is_echoed_as_a_file_or_variable_name(tmp_path, shape, where):
    value = "/" + shape if where == "authkey_file" else shape
    path = config(tmp_path, "127.0.0.1:1", {where: value})
    text = path.read_text().replace(f'authkey_file = "{key_file(tmp_path, AUTHKEY)}"\n', "", 1)
    path.write_text(text)
    result = run_cli("--config", str(path), "--port", "0")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"backends.adder.{where}" in output
    assert shape not in output and shape.lower() not in output.lower(), output


def test_a_secret_in_the_environment_is_not_echoed_either(tmp_path):
    path = config(tmp_path, "127.0.0.1:1")
    env = child_env(
        CONNBRIDGE_BACKENDS__ADDER__AUTHKEY_FILE="",
        CONNBRIDGE_BACKENDS__ADDER__ADDRESS=KEY,
        CONNBRIDGE_BACKENDS__OTHER__AUTHKEY_ENV=SCOPED,
    )
    result = run_cli("--config", str(path), "--port", "0", "--log-level", "debug", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "backends.adder.address (from CONNBRIDGE_BACKENDS__ADDER__ADDRESS)" in output
    assert leaks(output) == []
