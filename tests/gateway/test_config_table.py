"""The README's configuration: its tables of keys are what the models say, its example is one.

The tables are generated (``make config-table``, :mod:`gateway.config_table`);
these tests fail when a key is added, removed, described anew or given
another default without the README being regenerated, and when the example
shows a value that is not the default without calling it an example.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, create_model

from connbridge.pool_settings import PoolSettings
from gateway.config_table import Table, render, rewrite, tables
from gateway.settings import (
    POOL_KEYS,
    BackendSettings,
    GatewaySettings,
    Settings,
    table_of,
)

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("CONNBRIDGE_"):
            monkeypatch.delenv(name)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def rows(text: str, header: str) -> dict[str, tuple[str, str]]:
    """``key: (default, meaning)`` of the README's table of ``header``."""
    block = text.split(f"<!-- config-table {header} -->\n", 1)[1].split("<!-- /config-table", 1)[0]
    out = {}
    for line in block.splitlines()[2:]:
        key, default, meaning = re.fullmatch(r"\| `(\w+)` \| (.*?) \| (.*) \|", line).groups()
        out[key] = (default, meaning)
    return out


def test_the_readme_tables_are_generated_from_the_models():
    text = readme()
    assert rewrite(text) == text, "README.md is stale: run make config-table"


def test_every_table_and_every_key_is_in_the_readme():
    headers = [table.header for table in tables()]
    assert headers == ["[gateway]", "[backends.NAME]", "[[auth.keys]]", "[websocket]"]
    for table in tables():
        shown = rows(readme(), table.header)
        values = [
            name
            for name, info in table.model.model_fields.items()
            if table_of(info.annotation) is None
        ]
        assert list(shown) == values, table.header
        assert all(meaning.strip() for _, meaning in shown.values()), table.header


def toml_value(cell: str) -> Any:
    """A default cell of the README (`` `30.0` ``) read back as TOML."""
    return tomllib.loads(f"v = {cell.strip('`')}")["v"]


def test_the_readme_shows_every_pool_key_with_the_pools_default():
    # (Once the README's own example, which had to list them all by hand.)
    shown = rows(readme(), "[backends.NAME]")
    defaults = PoolSettings()
    for name in POOL_KEYS:
        value = getattr(defaults, name)
        assert toml_value(shown[name][0]) == (list(value) if isinstance(value, tuple) else value)


def test_a_new_key_or_a_new_default_makes_the_readme_stale():
    text = readme()
    SAME_MEANING = GatewaySettings.model_fields["max_depth"].description
    grown = create_model(
        "Grown",
        __base__=GatewaySettings,
        brand_new=(int, Field(default=3, description="A key nobody wrote down.")),
    )
    assert "brand_new" in render(Table("[gateway]", grown))
    moved = create_model(
        "Moved",
        __base__=GatewaySettings,
        max_depth=(int, Field(default=99, description=SAME_MEANING)),
    )
    current = render(Table("[gateway]", GatewaySettings))
    assert current in text
    for model in (grown, moved):
        assert render(Table("[gateway]", model)) != current


def test_a_key_without_a_description_is_refused():
    bare = create_model("Bare", __base__=GatewaySettings, undocumented=(int, 1))
    with pytest.raises(ValueError, match=r"\[gateway\] undocumented: the field has no description"):
        render(Table("[gateway]", bare))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no blocks at all\n", "config-table blocks missing: \\['\\[\\[auth.keys\\]\\]'"),
        ("<!-- config-table [gatewya] -->\n<!-- /config-table -->\n", "no such table"),
    ],
)
def test_a_bad_or_missing_block_is_an_error(text, message):
    with pytest.raises(ValueError, match=message):
        rewrite(text)


def test_make_config_table_rewrites_a_stale_readme(tmp_path):
    stale = tmp_path / "README.md"
    text = readme()
    stale.write_text(text.replace("| `port` | `8000` |", "| `port` | `8080` |"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.config_table", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stale.read_text(encoding="utf-8") == text


# -- the example ------------------------------------------------------------------------


def example() -> str:
    section = readme().split("### Configuration\n", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def settable(
    model: type[BaseModel], data: dict[str, Any], where: str = ""
) -> Iterator[tuple[str, str, Any, Any]]:
    """``(table, key, value, default)`` of every key set in ``data`` that has a default."""
    for key, value in data.items():
        info = model.model_fields[key]
        table = table_of(info.annotation)
        path = f"{where}.{key}" if where else key
        if table is not None:
            inner, how = table
            if how == "named":
                entries = [(f"{path}.{name}", item) for name, item in value.items()]
            elif how == "array":
                entries = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
            else:
                entries = [(path, value)]
            for at, item in entries:
                yield from settable(inner, item, at)
        elif not info.is_required():
            yield where, key, value, info.get_default(call_default_factory=True)


def test_the_example_is_a_valid_configuration():
    data = tomllib.loads(example().replace("<hex SHA-256 of the key>", "0" * 64))
    settings = Settings(**data)
    assert isinstance(settings.backends["adder"], BackendSettings)


def test_the_example_calls_every_value_other_than_the_default_an_example():
    text = example()
    data = tomllib.loads(text)
    lines = text.splitlines()
    checked = 0
    for where, key, value, default in settable(Settings, data):
        written = list(default) if isinstance(default, tuple) else default
        if value == written:
            continue
        (line,) = [line for line in lines if re.match(rf"{key}\s*=", line)]
        assert "# example" in line, f"{where}.{key}: {line!r} reads like a default"
        checked += 1
    assert checked >= 3  # the example does show something


def test_the_pool_keys_have_the_pools_descriptions():
    for f in dataclasses.fields(PoolSettings):
        if f.name in POOL_KEYS:
            assert BackendSettings.model_fields[f.name].description == f.metadata["doc"]
