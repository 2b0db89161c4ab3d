"""``/docs`` and ``/redoc`` in headless Chromium, against ``python -m gateway --demo``.

The quick start, done the way a person would in the browser: open the
Swagger UI page, find the operations, open ``POST /compute``, "Try it out"
with ``{"payload": [5, 6]}``, Execute, read 11. Every request the pages
made must have gone to the gateway itself (Chromium's network log), and
nothing must be logged as an error on the console.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.timeout(120)

WAIT = 30  # seconds: the longest any single step may take


def network_requests(driver: WebDriver) -> list[tuple[str, str | None]]:
    """``(url, blocked_reason)`` of each request since the last call (performance log).

    Only http(s) and ws(s) URLs: ``data:``, ``blob:`` and Chromium's own
    ``chrome://`` pages never touch the network.
    """
    sent: dict[str, str] = {}
    blocked: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[params["requestId"]] = params["blockedReason"]
    return [
        (url, blocked.get(request_id))
        for request_id, url in sent.items()
        if urlsplit(url).scheme in ("http", "https", "ws", "wss")
    ]


def foreign_requests(
    requests: list[tuple[str, str | None]], origin: str
) -> list[tuple[str, str | None]]:
    """The requests that went (or tried to go) anywhere but ``origin``."""
    return [
        (url, reason)
        for url, reason in requests
        if f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" != origin
    ]


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_swagger_ui_runs_compute(browser, gateway, tmp_path: Path):
    driver = browser
    wait = WebDriverWait(driver, WAIT)
    driver.get(gateway.url + "/docs")

    # The operations of the document, as Swagger UI lists them.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    listed = set()
    for block in driver.find_elements(By.CSS_SELECTOR, ".opblock"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
            "data-path"
        )
        listed.add(f"{method} {path}")
    expected = {
        "POST /compute",
        "POST /backends/demo/compute",
        "POST /compute/batch",
        "GET /backends",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    assert expected <= listed, listed
    driver.save_screenshot(str(tmp_path / "docs.png"))

    # Open POST /compute (id: operations-<tag>-<operationId>).
    operation = driver.find_element(By.ID, "operations-compute-compute")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    try_it = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "#operations-compute-compute .try-out__btn"))
    )
    try_it.click()
    body = wait.until(
        ec.element_to_be_clickable(
            (By.CSS_SELECTOR, "#operations-compute-compute textarea.body-param__text")
        )
    )
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys('{"payload": [5, 6]}')
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()

    # The live response: status 200 and a body with "result": 11.
    status = wait.until(
        ec.visibility_of_element_located(
            (
                By.CSS_SELECTOR,
                "#operations-compute-compute .live-responses-table tbody .response-col_status",
            )
        )
    )
    response_body = operation.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response-col_description pre"
    ).text
    driver.save_screenshot(str(tmp_path / "docs-compute.png"))
    assert status.text.strip().startswith("200"), (status.text, response_body)
    answer = json.loads(response_body)
    assert answer["result"] == 11
    assert answer["backend"] == "demo"
    # The request Swagger UI showed as curl is the quick start's.
    curl = operation.find_element(By.CSS_SELECTOR, ".curl-command").text
    assert re.search(r"-d '\{\s*\"payload\": \[5, 6\]\s*\}'", curl), curl

    assert foreign_requests(network_requests(driver), gateway.url) == []
    assert console_errors(driver) == []
    print(f"screenshots in {tmp_path}")


def test_redoc_renders_the_document(browser, gateway, tmp_path: Path):
    driver = browser
    wait = WebDriverWait(driver, WAIT)
    driver.get(gateway.url + "/redoc")
    section = (By.CSS_SELECTOR, '[data-section-id="tag/compute/operation/compute"]')
    wait.until(ec.presence_of_element_located(section))
    headings = {h.text for h in driver.find_elements(By.TAG_NAME, "h2")}
    for summary in (
        "Call a backend",
        "Call backend demo",
        "Make several calls",
        "List the backends",
        "Readiness",
    ):
        assert summary in headings, headings
    driver.save_screenshot(str(tmp_path / "redoc.png"))

    # ReDoc's bundle shows its vendor's logo from a CDN: the page's
    # Content-Security-Policy must have stopped it in the browser.
    foreign = foreign_requests(network_requests(driver), gateway.url)
    assert all(reason == "csp" for _, reason in foreign), foreign
    errors = console_errors(driver)
    unexpected = [
        e
        for e in errors
        if not ("Content Security Policy" in e["message"] and "cdn.redoc.ly" in e["message"])
    ]
    assert unexpected == [], unexpected
