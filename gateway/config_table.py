"""The README's tables of configuration keys, generated from the settings models.

``python -m gateway.config_table [README]`` (``make config-table``) rewrites,
in ``README.md`` by default, every block between ``<!-- config-table
HEADER -->`` and ``<!-- /config-table -->`` with the table of that TOML
table: each key, its default and its meaning, read from the models of
:mod:`gateway.settings` (the field's ``description``; a backend's pool keys
take theirs from :class:`~connbridge.pool_settings.PoolSettings`).
``tests/gateway/test_config_table.py`` fails when the README differs from
what this writes, so a key added, or a default changed, shows in the README
the moment it is regenerated.

The tables are found by walking :class:`~gateway.settings.Settings` with
:func:`~gateway.settings.table_of`, the walk that also finds the keys an
unknown key is compared with: a table added to the models needs a block in
the README (its absence is an error), and no list of tables is kept by hand.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from .settings import Settings, table_of

__all__ = ["DEFAULT_README", "Table", "render", "rewrite", "tables"]

#: The file ``make config-table`` rewrites.
DEFAULT_README: Final = "README.md"

_BLOCK = re.compile(
    r"(?P<open><!-- config-table (?P<header>\S+) -->\n).*?(?P<close><!-- /config-table -->)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Table:
    """One TOML table of the configuration, as a user writes its header."""

    header: str  # "[gateway]", "[backends.NAME]", "[[auth.keys]]"
    model: type[BaseModel]


def tables(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[Table]:
    """Every table under ``model`` that holds values, in the models' order.

    A table of tables only (the whole file, ``[auth]``) has no table of its own.
    """
    for name, info in model.model_fields.items():
        found = table_of(info.annotation)
        if found is None:
            continue
        inner, how = found
        path = f"{prefix}.{name}" if prefix else name
        header = {
            "table": f"[{path}]",
            "named": f"[{path}.NAME]",
            "array": f"[[{path}]]",
        }[how]
        if any(table_of(f.annotation) is None for f in inner.model_fields.values()):
            yield Table(header, inner)
        yield from tables(inner, path + (".NAME" if how == "named" else ""))


def _toml(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "*unset*"
    if isinstance(value, SecretStr):  # (no default is a secret; never show one)
        return "*secret*"
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(table: Table) -> str:
    """The Markdown table of one TOML table's keys.

    Raises:
        ValueError: a key has no ``description`` (every key must say what it does).
    """
    lines = [f"| `{table.header}` | default | meaning |", "| --- | --- | --- |"]
    for name, info in table.model.model_fields.items():
        if table_of(info.annotation) is not None:
            continue
        if not info.description:
            raise ValueError(f"{table.header} {name}: the field has no description")
        lines.append(f"| `{name}` | {_cell(_default(info))} | {_cell(info.description)} |")
    return "\n".join(lines) + "\n"


def rewrite(text: str) -> str:
    """``text`` (a README) with every config-table block regenerated.

    Raises:
        ValueError: a block names a table that does not exist, or a table
            has no block (or more than one).
    """
    rendered = {table.header: render(table) for table in tables()}
    seen: list[str] = []

    def block(match: re.Match[str]) -> str:
        header = match["header"]
        if header not in rendered:
            raise ValueError(f"config-table {header}: no such table (known: {sorted(rendered)})")
        seen.append(header)
        return match["open"] + rendered[header] + match["close"]

    text = _BLOCK.sub(block, text)
    missing = sorted(set(rendered) - set(seen))
    twice = sorted({header for header in seen if seen.count(header) > 1})
    if missing or twice:
        raise ValueError(f"config-table blocks missing: {missing}; given more than once: {twice}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the README named in ``argv`` (default ``README.md``); 1 if it has a bad block."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0] if args else DEFAULT_README)
    text = path.read_text(encoding="utf-8")
    try:
        new = rewrite(text)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: configuration tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
