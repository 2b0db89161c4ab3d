"""The TOML configuration, environment overrides and the errors that name file and key."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest
from gateway_support import sha256_hex
from process_support import child_env, run_cli

from connbridge.addresses import Address
from gateway.app import create_app
from gateway.settings import (
    CONFIG_ENV,
    MAX_SCHEMA_DEPTH,
    ConfigError,
    Settings,
    load_settings,
    read_authkeys,
)
from gateway.state import pool_settings

FULL = """
[gateway]
default_backend = "adder"
max_body_bytes = 65536
allow_anonymous = true
cors_origins = ["https://app.example"]
batch_max_requests = 10
batch_concurrency = 2
shutdown_grace = 3.5
max_depth = 64

[backends.adder]
address = "127.0.0.1:11111"
authkey_env = "ADDER_KEY_FOR_TEST"
call_timeout = 5.0
max_connections = 4
pickle_protocol = 2
allowlist = ["collections:Counter"]
py2_encoding = "latin1"
allow_md5 = false
connect_timeout = 1.5
handshake_timeout = 2.5
acquire_timeout = 3.5
max_waiters = 7
idle_timeout = 60
max_lifetime = 600
max_frame = 4096
payload_schema = { type = "array", items = { type = "integer" } }

[backends.replicas]
address = ["[::1]:2000", "unix:/run/replica.sock", "unix:@abstract"]
authkey_file = "{keyfile}"

[[auth.keys]]
name = "ci"
sha256 = "{digest}"
backends = ["adder"]
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("CONNBRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ADDER_KEY_FOR_TEST", "adder-secret")


def write(tmp_path: Path, text: str, name: str = "connbridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def full_config(tmp_path: Path) -> Path:
    keyfile = tmp_path / "replica.key"
    keyfile.write_bytes(b"replica-secret\r\n")
    text = FULL.replace("{keyfile}", str(keyfile)).replace("{digest}", sha256_hex("k").upper())
    return write(tmp_path, text)


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value).splitlines()


def test_full_configuration(tmp_path):
    settings = load_settings(full_config(tmp_path))
    gateway = settings.gateway
    assert gateway.default_backend == "adder"
    assert gateway.max_body_bytes == 65536
    assert gateway.allow_anonymous
    assert gateway.cors_origins == ("https://app.example",)
    assert (gateway.batch_max_requests, gateway.batch_concurrency) == (10, 2)
    adder = settings.backends["adder"]
    assert adder.address == (Address("tcp", host="127.0.0.1", port=11111),)
    authkeys = read_authkeys(settings)
    assert authkeys["adder"] == b"adder-secret"
    assert adder.payload_schema == {"type": "array", "items": {"type": "integer"}}
    replicas = settings.backends["replicas"]
    assert [str(a) for a in replicas.address] == [
        "[::1]:2000",
        "unix:/run/replica.sock",
        "unix:@abstract",
    ]
    assert authkeys["replicas"] == b"replica-secret"  # the newline is not part of it
    assert settings.auth.keys[0].sha256 == sha256_hex("k")
    pool = pool_settings(adder, close_grace=gateway.shutdown_grace)
    assert (pool.call_timeout, pool.max_connections, pool.pickle_protocol) == (5.0, 4, 2)
    assert (pool.connect_timeout, pool.handshake_timeout, pool.acquire_timeout) == (1.5, 2.5, 3.5)
    assert (pool.max_waiters, pool.idle_timeout, pool.max_lifetime) == (7, 60, 600)
    assert (pool.max_frame, pool.allow_md5, pool.py2_encoding) == (4096, False, "latin1")
    assert pool.allowlist == ("collections:Counter",)
    assert pool.close_grace == 3.5


def test_no_secret_in_any_rendering(tmp_path, monkeypatch):
    monkeypatch.setenv("ADDER_KEY_FOR_TEST", "adder-secret")
    settings = load_settings(full_config(tmp_path))
    literal = write(
        tmp_path,
        """
        [backends.b]
        address = "127.0.0.1:1"
        authkey = "literal-secret"
        """,
        "literal.toml",
    )
    other = load_settings(literal)
    for rendered in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(other),
        other.model_dump_json(),
    ):
        for secret in ("adder-secret", "replica-secret", "literal-secret"):
            assert secret not in rendered


def test_literal_authkey_warns(tmp_path, caplog):
    path = write(
        tmp_path,
        """
        [backends.b]
        address = "127.0.0.1:1"
        authkey = "literal-secret"
        """,
    )
    with caplog.at_level(logging.WARNING):
        settings = load_settings(path)
    assert read_authkeys(settings)["b"] == b"literal-secret"
    assert any("backends.b.authkey" in r.getMessage() for r in caplog.records)
    assert all("literal-secret" not in r.getMessage() for r in caplog.records)


def test_defaults_and_single_default_backend(tmp_path):
    settings = load_settings(write(tmp_path, '[backends.only]\naddress = "unix:/x"\n'))
    assert settings.default_backend == "only"
    assert settings.gateway.max_body_bytes == 1024 * 1024
    assert settings.gateway.allow_anonymous is False
    assert settings.gateway.shutdown_grace == 10
    assert settings.gateway.max_depth == 256
    assert read_authkeys(settings)["only"] is None
    two = load_settings(
        write(tmp_path, '[backends.a]\naddress = "unix:/a"\n[backends.b]\naddress = "unix:/b"\n')
    )
    assert two.default_backend is None


def test_config_from_environment_variable(tmp_path, monkeypatch):
    path = write(tmp_path, '[backends.env]\naddress = "unix:/x"\n')
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert list(load_settings().backends) == ["env"]


def test_environment_overrides(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        """
        [gateway]
        max_body_bytes = 100
        [backends.adder]
        address = "127.0.0.1:1"
        call_timeout = 5
        """,
    )
    monkeypatch.setenv("CONNBRIDGE_GATEWAY__MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__ADDER__CALL_TIMEOUT", "2.5")
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__ADDER__ADDRESS", "unix:/run/adder.sock")
    monkeypatch.setenv("CONNBRIDGE_GATEWAY__CORS_ORIGINS", '["http://a.example"]')
    settings = load_settings(path)
    assert settings.gateway.max_body_bytes == 2048
    assert settings.backends["adder"].pool.call_timeout == 2.5
    assert [str(a) for a in settings.backends["adder"].address] == ["unix:/run/adder.sock"]
    assert settings.gateway.cors_origins == ("http://a.example",)
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__ADDER__ADDRESS", '["unix:/a", "127.0.0.1:2"]')
    assert len(load_settings(path).backends["adder"].address) == 2


def test_bad_environment_value_names_the_variable(tmp_path, monkeypatch):
    path = write(tmp_path, '[backends.adder]\naddress = "127.0.0.1:1"\n')
    monkeypatch.setenv("CONNBRIDGE_GATEWAY__MAX_BODY_BYTES", "-1")
    assert errors_of(path) == [
        f"{path}: gateway.max_body_bytes (from CONNBRIDGE_GATEWAY__MAX_BODY_BYTES): "
        "Input should be greater than 0"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[backends.adder]\naddress = "nope"\n', "backends.adder.address: expected 'host:port'"),
        ("[backends.adder]\naddress = []\n", "backends.adder.address: expected an address"),
        ("[backends.adder]\ncall_timeout = 1\n", "backends.adder.address: required key is missing"),
        (
            '[backends.adder]\naddress = "unix:/a"\ntimeot = 1\n',
            "backends.adder.timeot: unknown key",
        ),
        (
            '[backends.adder]\naddress = "unix:/a"\ncall_timeout = -1\n',
            "backends.adder.call_timeout: must be greater than 0",
        ),
        ("[gatewy]\n", "gatewy: unknown key"),
        ('[backends.adder]\naddress = "unix:/a"\npickle_protocol = 9\n', "pickle_protocol"),
        (
            '[backends.adder]\naddress = "unix:/a"\nallowlist = ["os:nothing_here"]\n',
            "backends.adder.allowlist: allowlist entry 'os:nothing_here'",
        ),
        (
            '[backends.adder]\naddress = "unix:/a"\nallowlist = ["no colon"]\n',
            "backends.adder.allowlist:",
        ),
        (
            '[backends.adder]\naddress = "unix:/a"\npy2_encoding = "klingon"\n',
            "backends.adder.py2_encoding: unknown encoding",
        ),
        (
            '[backends.adder]\naddress = "unix:/a"\npayload_schema = { type = "integr" }\n',
            "backends.adder.payload_schema: not a valid JSON Schema (at /type)",
        ),
        ('[backends."bad name"]\naddress = "unix:/a"\n', "backends: backend name 'bad name'"),
        (
            '[gateway]\ndefault_backend = "ghost"\n[backends.a]\naddress = "unix:/a"\n',
            "gateway.default_backend: no backend is named 'ghost'",
        ),
        (
            '[gateway]\ntls_certfile = "/c.pem"\n',
            "gateway: tls_certfile and tls_keyfile must be set together",
        ),
        ('[[auth.keys]]\nname = "a"\nsha256 = "abc"\n', "auth.keys[0].sha256: expected the 64"),
        (
            f'[backends.a]\naddress = "unix:/a"\n[[auth.keys]]\nname = "a"\nsha256 = "{"0" * 64}"\n'
            'backends = ["ghost"]\n',
            "auth.keys[0].backends: no backend is named 'ghost'",
        ),
        (
            '[backends.a]\naddress = "unix:/a"\nauthkey_env = "X"\nauthkey = "y"\n',
            "backends.a.authkey: set only one of",
        ),
        ('[backends.a\naddress = "unix:/a"\n', "invalid TOML"),
        *(
            (
                '[backends.adder]\naddress = "unix:/a"\npayload_schema = '
                + '{type = "array", items = ' * depth
                + "{}"
                + "}" * depth
                + "\n",
                f"backends.adder.payload_schema: the schema nests more than {MAX_SCHEMA_DEPTH} "
                "levels",
            )
            for depth in (MAX_SCHEMA_DEPTH, 300)
        ),
        (
            '[backends.adder]\naddress = "unix:/a"\npayload_schema = '
            + "{items = " * 1500
            + "{}"
            + "}" * 1500
            + "\n",
            "invalid TOML: nested too deeply",
        ),
        (
            '[backends.m]\naddress = "unix:/a"\nkind = "manager"\n',
            "backends.m: a manager backend needs typeids",
        ),
        (
            '[backends.m]\naddress = "unix:/a"\nkind = "manager"\ntypeids = ["*", "q"]\n',
            'backends.m: typeids: "*" allows every typeid',
        ),
        (
            '[backends.m]\naddress = "unix:/a"\nkind = "manager"\ntypeids = ["q"]\n'
            'payload_schema = { type = "integer" }\n',
            "backends.m: a manager backend takes no payload_schema",
        ),
        (
            '[backends.a]\naddress = "unix:/a"\ntypeids = ["q"]\n',
            'backends.a: typeids and methods are keys of kind = "manager" backends',
        ),
        ('[backends.a]\naddress = "unix:/a"\nkind = "mgr"\n', "backends.a.kind:"),
        (
            '[backends.m]\naddress = "unix:/a"\nkind = "manager"\ntypeids = ["q"]\n'
            "object_ttl = 0\n",
            "backends.m.object_ttl:",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    lines = errors_of(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in lines), lines


def test_every_problem_is_reported(tmp_path):
    path = write(
        tmp_path,
        """
        [backends.a]
        address = "nope"
        foo = 1
        [backends.b]
        address = "unix:/b"
        call_timeout = 0
        """,
    )
    lines = errors_of(path)
    assert len(lines) == 3
    assert {line.split(": ")[1] for line in lines} == {
        "backends.a.address",
        "backends.a.foo",
        "backends.b.call_timeout",
    }


# A value that must never show: it is given to keys whose names are typos.
SECRET = "s3cr3t-Value-0f-A-Typo-9x7Kq2"


def test_a_typo_gets_the_key_it_was_meant_to_be_at_every_level(tmp_path):
    path = write(
        tmp_path,
        f"""
        [gateway]
        max_body_byte = 5
        [backends.adder]
        address = "unix:/a"
        max_conections = 3
        authkey_fiel = "{SECRET}"
        close_grace = 1.0
        [websockt]
        send_queue = 1
        [websocket]
        ping_intervall = 1.0
        [auth]
        key = []
        [[auth.keys]]
        name = "ci"
        sha256 = "{"0" * 64}"
        backend = ["{SECRET}"]
        zzzzzz = 1
        """,
    )
    env = child_env(
        CONNBRIDGE_GATEWY__PORT=SECRET,
        CONNBRIDGE_GATEWAY__PROT=SECRET,
        CONNBRIDGE_BACKENDS__ADDER__ADRESS=SECRET,
        CONNBRIDGE_WEBSOCKET__SEND_QUEU=SECRET,
    )
    result = run_cli("--config", str(path), "--port", "0", env=env)
    assert result.returncode == 2, result.stderr
    prefix = "connbridge-gateway: error: "
    lines = [line.removeprefix(prefix) for line in result.stderr.splitlines()]
    assert sorted(lines) == sorted(
        f"{path}: {key}: {message}"
        for key, message in [
            ("gatewy (from CONNBRIDGE_GATEWY__PORT)", "unknown key; did you mean gateway?"),
            ("gateway.max_body_byte", "unknown key; did you mean max_body_bytes?"),
            ("gateway.prot (from CONNBRIDGE_GATEWAY__PROT)", "unknown key; did you mean port?"),
            ("backends.adder.max_conections", "unknown key; did you mean max_connections?"),
            ("backends.adder.authkey_fiel", "unknown key; did you mean authkey_file?"),
            (
                "backends.adder.adress (from CONNBRIDGE_BACKENDS__ADDER__ADRESS)",
                "unknown key; did you mean address?",
            ),
            ("backends.adder.close_grace", "unknown key: every pool gets [gateway] shutdown_grace"),
            ("websockt", "unknown key; did you mean websocket?"),
            ("websocket.ping_intervall", "unknown key; did you mean ping_interval?"),
            (
                "websocket.send_queu (from CONNBRIDGE_WEBSOCKET__SEND_QUEU)",
                "unknown key; did you mean send_queue?",
            ),
            ("auth.key", "unknown key; did you mean keys?"),
            ("auth.keys[0].backend", "unknown key; did you mean backends?"),
            ("auth.keys[0].zzzzzz", "unknown key"),  # nothing close: no guess
        ]
    )
    assert SECRET not in result.stdout + result.stderr


def test_variables_of_no_section_are_left_alone_without_a_double_underscore(tmp_path, monkeypatch):
    # Kubernetes' service variables (CONNBRIDGE_PORT, ...) and the tests' switches.
    path = write(tmp_path, '[backends.a]\naddress = "unix:/a"\n')
    monkeypatch.setenv("CONNBRIDGE_PORT", "tcp://10.0.0.1:8000")
    monkeypatch.setenv("CONNBRIDGE_SERVICE_HOST", "10.0.0.1")
    assert load_settings(path).gateway.port == 8000
    monkeypatch.setenv("CONNBRIDGE_BACKEND__A__ADDRESS", "unix:/b")
    assert errors_of(path) == [
        f"{path}: backend (from CONNBRIDGE_BACKEND__A__ADDRESS): unknown key; "
        "did you mean backends?"
    ]


def test_missing_file(tmp_path):
    assert errors_of(tmp_path / "absent.toml") == [
        f"{tmp_path / 'absent.toml'}: cannot read the file: No such file or directory"
    ]


def test_create_app_checks_settings_built_in_code(tmp_path):
    settings = Settings(
        backends={"a": {"address": "unix:/a", "authkey_env": "UNSET_VARIABLE_FOR_TEST"}}
    )
    with pytest.raises(ConfigError, match=r"backends\.a\.authkey_env"):
        create_app(settings)
    with pytest.raises(ConfigError, match="default_backend"):
        create_app(Settings(gateway={"default_backend": "x"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[backends.a]\naddress = "unix:/a"\nauthkey_env = "UNSET_VARIABLE_FOR_TEST"\n',
            "backends.a.authkey_env: environment variable UNSET_VARIABLE_FOR_TEST is unset",
        ),
        (
            '[backends.a]\naddress = "unix:/a"\nauthkey_file = "/no/such/key"\n',
            "backends.a.authkey_file: cannot read /no/such/key",
        ),
    ],
)
def test_an_unreadable_authkey_stops_building_the_state(tmp_path, text, expected):
    # Changed: keys are read once, when the app's state is built, no longer
    # by load_settings; the problem is still named by its key.
    settings = load_settings(write(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        create_app(settings)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"configuration: {expected}"), line


def test_authkeys_are_read_once_when_the_state_is_built(tmp_path):
    keyfile = tmp_path / "a.key"
    keyfile.write_bytes(b"first")
    settings = load_settings(
        write(tmp_path, f'[backends.a]\naddress = "unix:/a"\nauthkey_file = "{keyfile}"\n')
    )
    keyfile.write_bytes(b"second")  # after loading: the state reads it
    state = create_app(settings).state.gateway
    keyfile.write_bytes(b"third")  # after building: nothing reads it again
    assert state.backends["a"].authkey == b"second"
    assert read_authkeys(settings)["a"] == b"third"


def test_every_problem_of_the_state_is_reported_at_once(tmp_path):
    settings = Settings(
        gateway={"default_backend": "ghost"},
        backends={
            "a": {"address": "unix:/a", "authkey_env": "UNSET_VARIABLE_FOR_TEST"},
            "b": {"address": "unix:/b", "authkey_file": str(tmp_path / "absent")},
        },
    )
    with pytest.raises(ConfigError) as info:
        create_app(settings)
    assert [key for key, _ in info.value.problems] == [
        "gateway.default_backend",
        "backends.a.authkey_env",
        "backends.b.authkey_file",
    ]
