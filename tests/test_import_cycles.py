"""No import cycle in ``connbridge/`` or ``gateway/``.

Each module's source is parsed (nothing is imported), every import of a
module of the two packages becomes an edge, and the graph must have no
cycle. Every import counts, wherever it is written: at module level, inside
a function (a deferred import that only hides a cycle is still a cycle), and
under ``if TYPE_CHECKING:`` (a cycle that mypy sees is a cycle of design).
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connbridge", "gateway")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(
    tree: ast.Module, name: str, is_package: bool, modules: Collection[str]
) -> Iterator[str]:
    """Every module named by an import anywhere in ``tree`` (absolute names)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                # ``from . import problems`` names the module ``problems``;
                # ``from .problems import pointer`` the module ``problems``.
                inner = f"{origin}.{alias.name}"
                yield inner if inner in modules else origin


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the two packages it imports (a package is its ``__init__``)."""
    paths = [path for package in PACKAGES for path in (root / package).rglob("*.py")]
    files = {_module_name(path, root): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set(_imported(tree, name, path.name == "__init__.py", files))
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        # Iterative depth-first search; ``path`` is the current chain.
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if following in on_path:
                return [*path[path.index(following) :], following]
            if following in done:
                continue
            path.append(following)
            on_path.add(following)
            stack.append(iter(sorted(graph[following])))
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "gateway.problems" in graph and "connbridge.pool" in graph  # the walk found them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    # A package whose modules import each other at module level, inside a
    # function, and under TYPE_CHECKING: each pair is a cycle.
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    sources = {
        "connbridge/a.py": "from .b import x\n",
        "connbridge/b.py": "def f():\n    from . import a\n",
        "gateway/c.py": "import typing\nif typing.TYPE_CHECKING:\n    import gateway.d\n",
        "gateway/d.py": "from connbridge import a\nfrom .c import y\n",
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["connbridge.a"] == {"connbridge.b"}
    assert graph["connbridge.b"] == {"connbridge.a"}
    assert graph["gateway.c"] == {"gateway.d"}
    assert graph["gateway.d"] == {"connbridge.a", "gateway.c"}
    assert find_cycle(graph) == ["connbridge.a", "connbridge.b", "connbridge.a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
