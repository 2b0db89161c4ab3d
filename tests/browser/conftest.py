"""Browser tests: the docs pages in a real headless Chromium, driven by Selenium.

They need Debian's ``chromium`` and ``chromium-driver`` and take a while, so
they run only when asked: ``make test-browser`` (which sets
``CONNBRIDGE_BROWSER=1`` and selects ``-m browser``). In a plain ``make
test`` they are reported as skipped, with that reason.

Every test here is marked ``browser``. Chromium is started with its
background traffic off and every host name but the gateway's loopback
address resolving to nothing: the pages may reach only the gateway.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENABLE = "CONNBRIDGE_BROWSER"
CHROMIUM = os.environ.get("CONNBRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CONNBRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver")
LISTENING = re.compile(r"connbridge gateway listening on (http://127\.0\.0\.1:\d+)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = os.environ.get(ENABLE) == "1"
    skip = pytest.mark.skip(
        reason=f"browser test: run it with `make test-browser` (or {ENABLE}=1 pytest -m browser)"
    )
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        item.add_marker(pytest.mark.browser)
        if not enabled:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chromium_paths() -> tuple[str, str]:
    """The browser and driver; asked for and missing is a failure, not a skip."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install -y chromium chromium-driver",
            pytrace=False,
        )
    return CHROMIUM, CHROMEDRIVER


class GatewayProcess:
    """``python -m gateway --demo --port 0`` in a subprocess; :attr:`url` once it listens."""

    def __init__(self, log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNBRIDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--demo", "--host", "127.0.0.1", "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.url = self._wait_listening(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(self.output())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with {self.proc.returncode}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the gateway did not listen within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    workdir = Path(tempfile.mkdtemp(prefix="cb-browser-"))
    process = GatewayProcess(workdir / "gateway.log")
    try:
        yield process
    finally:
        status = process.stop()
        output = process.output()
        shutil.rmtree(workdir, ignore_errors=True)
        assert status == 0, f"the gateway exited with {status}:\n{output}"


@pytest.fixture
def browser(chromium_paths: tuple[str, str], gateway: GatewayProcess, tmp_path: Path) -> Iterator:
    """A fresh headless Chromium (its own profile directory) under Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chromium_paths
    host = gateway.url.split("//", 1)[1].rsplit(":", 1)[0]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Any name but the gateway's address resolves to nothing: a page that
        # tried a CDN would fail here rather than reach the internet.
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
    ]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    # Selenium Manager must not look for drivers online.
    with _env(SE_OFFLINE="true", SE_AVOID_STATS="true"):
        driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        # Start the tests' logs empty (Chromium's start page writes to them).
        driver.get_log("performance")
        driver.get_log("browser")
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
