"""The package metadata: what `pip install` reads before anything runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))


def test_the_license_is_an_spdx_expression() -> None:
    # A table ({text = ...}) makes setuptools warn three times on every install.
    assert PYPROJECT["project"]["license"] == "MIT"
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])
