"""A host name whose addresses change: the pool follows them.

Changing what a name resolves to needs a private /etc/hosts, so the scenario
(``dns_scenario.py``) runs under ``unshare --mount`` with its own hosts file
bind-mounted over /etc/hosts; the real /etc/hosts is never touched. This
needs root (CI runs as root); elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("dns_scenario.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private /etc/hosts in a mount namespace",
)


@pytest.fixture(scope="module")
def report() -> dict:
    command = ["unshare", "--mount", "--propagation", "private", sys.executable, str(SCENARIO)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_a_name_is_resolved_to_its_one_address(report) -> None:
    port = report["first"][0].rsplit(":", 1)[1]
    assert report["first"] == [f"127.0.0.2:{port}"]
    assert report["first_pids"] == [report["pids"]["127.0.0.2"]]


def test_an_address_added_to_the_name_gets_calls(report) -> None:
    port = report["first"][0].rsplit(":", 1)[1]
    assert report["both"] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
    assert report["both_pids"] == sorted(report["pids"].values())


def test_an_address_removed_from_the_name_gets_no_more_calls_and_is_forgotten(report) -> None:
    port = report["first"][0].rsplit(":", 1)[1]
    assert report["last"] == [f"127.0.0.3:{port}"]
    assert report["stale_then_forgotten"] is True
    assert report["last_pids"] == [report["pids"]["127.0.0.3"]]


def test_a_name_that_stops_resolving_keeps_its_last_addresses(report) -> None:
    port = report["first"][0].rsplit(":", 1)[1]
    assert report["resolve_error"].startswith("cannot resolve replicas.connbridge.test")
    assert report["kept_on_failure"] == [f"127.0.0.3:{port}"]
    assert report["pids_on_failure"] == [report["pids"]["127.0.0.3"]]


def test_an_address_of_the_name_that_never_answers_is_set_aside_quietly(report) -> None:
    aside = report["set_aside"]
    port = report["first"][0].rsplit(":", 1)[1]
    assert aside["targets"] == [f"127.0.0.3:{port}"]
    # A bounded number of warnings, then one line saying it is left out; then silence.
    assert sum("left out" in line for line in aside["lines"]) == 1
    assert len(aside["lines"]) <= 4, aside["lines"]
    assert aside["lines_after"] == 0
