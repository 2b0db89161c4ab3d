"""The package's public names are complete and importable."""

from __future__ import annotations

import importlib

import pytest

import connbridge
from connbridge import errors

MODULES = [
    "addresses",
    "codec",
    "connection",
    "errors",
    "frames",
    "handshake",
    "holder",
    "manager",
    "pickle_limits",
    "pipelining",
    "plain_types",
    "pool",
    "pool_settings",
    "replica",
    "server",
    "streaming",
    "unpickler",
]


def test_every_exported_name_resolves() -> None:
    for name in connbridge.__all__:
        assert getattr(connbridge, name) is not None, name


def test_every_error_class_is_exported_at_the_top() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ConnbridgeError)
    }
    assert classes == set(errors.__all__)
    assert classes <= set(connbridge.__all__)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_all_lists_only_what_it_defines(module: str) -> None:
    mod = importlib.import_module(f"connbridge.{module}")
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = connbridge.no_such_name  # type: ignore[attr-defined]
