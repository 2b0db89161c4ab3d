"""Every field of ``PoolSettings`` is a key of ``[backends.NAME]``, in the file and the environment.

The fields are read from ``dataclasses.fields(PoolSettings)``, so a field
added to the pool's settings is covered here without touching this file; the
only fields left out are the gateway-wide ones, each with its reason. (That the
README shows each of them with its default: ``test_config_table.py``.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import typing
from pathlib import Path

import pytest

from connbridge.connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT
from connbridge.pool import PoolSettings
from connbridge.pool_settings import field_problem
from gateway.settings import (
    GATEWAY_WIDE_POOL_FIELDS,
    POOL_KEYS,
    BackendSettings,
    ConfigError,
    Settings,
    load_settings,
)
from gateway.state import GatewayState, pool_settings

FIELDS = [f for f in dataclasses.fields(PoolSettings) if f.name not in GATEWAY_WIDE_POOL_FIELDS]
HINTS = typing.get_type_hints(PoolSettings)
#: Values tried, in order, for a field whose type alone gives no other valid value.
CANDIDATES: dict[type, list[object]] = {
    str: ["latin1", "bytes", "ascii"],
    tuple: [("collections:Counter",), ("fractions:Fraction",)],
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("CONNBRIDGE_"):
            monkeypatch.delenv(name)


def other_value(f: dataclasses.Field) -> object:
    """A valid value of the field that is not its default (so that reaching the pool shows)."""
    default = f.default
    hint = HINTS[f.name]
    origin = typing.get_origin(hint) or hint
    if origin is typing.Literal:
        tries = list(typing.get_args(hint))
    elif origin is bool:
        tries = [not default]
    elif origin is int:
        tries = [default + 1, default - 1]
    elif origin is float:
        tries = [default / 2, default + 0.5]
    else:
        tries = CANDIDATES.get(origin, [])
    for value in tries:
        if value != default and field_problem(f.name, value) is None:
            return value
    pytest.fail(f"no valid value other than the default known for {f.name}: extend CANDIDATES")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connbridge.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_pool_keys_are_the_fields_less_the_gateway_wide_ones():
    names = [f.name for f in dataclasses.fields(PoolSettings)]
    assert set(GATEWAY_WIDE_POOL_FIELDS) <= set(names)
    assert list(POOL_KEYS) == [n for n in names if n not in GATEWAY_WIDE_POOL_FIELDS]
    assert set(POOL_KEYS) <= set(BackendSettings.model_fields)
    # Every exclusion says why.
    assert all(reason for reason in GATEWAY_WIDE_POOL_FIELDS.values())


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_pool_field_is_settable_from_the_file(tmp_path, f):
    value = other_value(f)
    path = write(
        tmp_path,
        f'[backends.b]\naddress = "unix:/b"\n{f.name} = {toml_value(value)}\n',
    )
    settings = load_settings(path)
    pool = pool_settings(settings.backends["b"], close_grace=settings.gateway.shutdown_grace)
    assert getattr(pool, f.name) == value


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_pool_field_is_settable_from_the_environment(tmp_path, monkeypatch, f):
    value = other_value(f)
    path = write(tmp_path, '[backends.b]\naddress = "unix:/b"\n')
    monkeypatch.setenv(f"CONNBRIDGE_BACKENDS__B__{f.name.upper()}", env_value(value))
    settings = load_settings(path)
    pool = pool_settings(settings.backends["b"], close_grace=1.0)
    assert getattr(pool, f.name) == value


def test_a_backend_given_only_in_the_environment_gets_every_pool_field(monkeypatch):
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__E__ADDRESS", "unix:/e")
    for f in FIELDS:
        monkeypatch.setenv(f"CONNBRIDGE_BACKENDS__E__{f.name.upper()}", env_value(other_value(f)))
    pool = load_settings().backends["e"].pool
    assert {f.name: getattr(pool, f.name) for f in FIELDS} == {
        f.name: other_value(f) for f in FIELDS
    }


def test_one_default_per_knob():
    # A backend that sets nothing gets exactly the pool's own defaults ...
    backend = BackendSettings.model_validate({"address": "unix:/d"})
    assert backend.pool == PoolSettings()
    # ... close_grace comes from [gateway] shutdown_grace ...
    assert pool_settings(backend, close_grace=3.0) == dataclasses.replace(
        PoolSettings(), close_grace=3.0
    )
    # ... and a bare connection waits as long as a pooled one.
    assert PoolSettings().connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert PoolSettings().handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT


@pytest.mark.parametrize("name", ["close_grace", *GATEWAY_WIDE_POOL_FIELDS])
def test_a_gateway_wide_field_is_not_a_backend_key(tmp_path, name):
    path = write(tmp_path, f'[backends.b]\naddress = "unix:/b"\n{name} = 1.0\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    # The message says where the value comes from instead.
    assert info.value.problems == [
        (f"backends.b.{name}", f"unknown key: {GATEWAY_WIDE_POOL_FIELDS[name]}")
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (f.name, text)
        for f in FIELDS
        if "check" not in f.metadata  # a field with a rule of its own is tested below
        for text in {
            bool: ['"maybe"'],
            int: ["-37", "4.5", '"many"'],
            float: ["-1.25", "inf", "nan", '"soon"'],
        }.get(typing.get_origin(HINTS[f.name]) or HINTS[f.name], [])
    ],
)
def test_a_bad_pool_value_names_its_key_and_not_the_value(tmp_path, name, text):
    path = write(tmp_path, f'[backends.b]\naddress = "unix:/b"\n{name} = {text}\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    ((key, message),) = info.value.problems
    assert key == f"backends.b.{name}"
    assert text.strip('"') not in message
    assert message


def test_a_bad_pool_value_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    path = write(tmp_path, '[backends.b]\naddress = "unix:/b"\n')
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__B__DRAIN_TIMEOUT", "-7")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        (
            "backends.b.drain_timeout (from CONNBRIDGE_BACKENDS__B__DRAIN_TIMEOUT)",
            "must be greater than 0",
        )
    ]


def test_pool_settings_refuse_what_the_gateway_refuses():
    for kwargs, start in [
        ({"max_connections": 0}, "max_connections: must be greater than 0"),
        ({"idle_timeout": float("inf")}, "idle_timeout: must be a finite number"),
        ({"pickle_protocol": 6}, "pickle_protocol: must be a pickle protocol"),
        ({"py2_encoding": "klingon"}, "py2_encoding: unknown encoding"),
        ({"allowlist": ("os:nothing_here",)}, "allowlist: allowlist entry 'os:nothing_here'"),
    ]:
        with pytest.raises(ValueError) as info:
            PoolSettings(**kwargs)
        assert str(info.value).startswith(start), info.value
    # What the library accepted before is still accepted.
    assert PoolSettings(allowlist=["collections:Counter"]).allowlist == ["collections:Counter"]
    assert PoolSettings(py2_encoding="bytes", pickle_protocol=0).pickle_protocol == 0


class TestTheOldNameOfCallTimeout:
    """``timeout`` was the key of ``call_timeout``: still read, with a DeprecationWarning."""

    def test_in_the_file(self, tmp_path):
        path = write(tmp_path, '[backends.b]\naddress = "unix:/b"\ntimeout = 2.5\n')
        with pytest.warns(
            DeprecationWarning, match="'timeout' is deprecated; write 'call_timeout'"
        ):
            settings = load_settings(path)
        assert settings.backends["b"].pool.call_timeout == 2.5

    def test_in_the_environment(self, tmp_path, monkeypatch):
        path = write(tmp_path, '[backends.b]\naddress = "unix:/b"\n')
        monkeypatch.setenv("CONNBRIDGE_BACKENDS__B__TIMEOUT", "1.5")
        with pytest.warns(DeprecationWarning, match="call_timeout"):
            settings = load_settings(path)
        assert settings.backends["b"].pool.call_timeout == 1.5

    def test_in_code(self):
        with pytest.warns(DeprecationWarning, match="call_timeout"):
            backend = BackendSettings.model_validate({"address": "unix:/b", "timeout": 4})
        assert backend.pool.call_timeout == 4.0

    def test_both_names_is_an_error(self, tmp_path):
        path = write(
            tmp_path, '[backends.b]\naddress = "unix:/b"\ntimeout = 2.5\ncall_timeout = 3\n'
        )
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert info.value.problems == [
            ("backends.b", "timeout is the old name of call_timeout: set only call_timeout")
        ]

    def test_its_bad_value_is_still_refused(self, tmp_path):
        path = write(tmp_path, '[backends.b]\naddress = "unix:/b"\ntimeout = -1\n')
        with pytest.warns(DeprecationWarning), pytest.raises(ConfigError) as info:
            load_settings(path)
        # Named as written.
        assert info.value.problems == [("backends.b.timeout", "must be greater than 0")]


async def test_each_pool_is_built_from_its_table(tmp_path):
    settings = Settings(
        gateway={"shutdown_grace": 2.0},
        backends={
            "b": {
                "address": f"unix:{tmp_path}/absent.sock",
                "drain_timeout": 7,
                "dns_interval": 0.5,
            }
        },
    )
    state = GatewayState(settings)
    await state.start()  # a backend that is down is no error
    try:
        pool = state.backends["b"].running_pool()
        assert (pool.settings.drain_timeout, pool.settings.dns_interval) == (7.0, 0.5)
        assert pool.settings.close_grace == 2.0
    finally:
        await state.close()
