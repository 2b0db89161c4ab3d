"""``EventSource`` in headless Chromium reads ``GET /backends/demo/stream``.

Against ``python -m gateway --demo``: the README's ``EventSource`` example
runs as written (only the address is replaced), then a longer stream must
arrive whole and in order, and a stream broken mid-way must end with our
``error`` event (with its problem), each without the browser reconnecting.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from test_docs_browser import network_requests

from tests.gateway.stream_support import README_URL, readme_example

pytestmark = pytest.mark.timeout(120)

# Runs in the page: collects what the example logs, and ends when it closes its source.
_HARNESS = """
const done = arguments[arguments.length - 1];
const out = [];
console.log = (...args) => out.push(["log", ...args]);
console.error = (...args) => out.push(["error", ...args]);
const close = EventSource.prototype.close;
EventSource.prototype.close = function () { close.call(this); done(out); };
"""

_READ_ALL = """
const done = arguments[arguments.length - 1];
const events = [];
const source = new EventSource(arguments[0]);
source.onmessage = (event) => events.push([event.lastEventId, JSON.parse(event.data)]);
for (const name of ["end", "error"]) {
  source.addEventListener(name, (event) => {
    source.close();
    done({events, last: [name, event.data === undefined ? null : JSON.parse(event.data)]});
  });
}
"""


def stream_url(base: str, payload: object, **fields: object) -> str:
    query = urlencode({"payload": json.dumps(payload), **{k: str(v) for k, v in fields.items()}})
    return f"{base}/backends/demo/stream?{query}"


def stream_requests(driver: WebDriver) -> list[str]:
    return [url for url, _ in network_requests(driver) if "/stream" in url]


def test_the_readme_event_source_example(browser, gateway):
    driver = browser
    driver.get(gateway.url + "/healthz")  # any page of the gateway's origin
    example = readme_example("js", "new EventSource(").replace(README_URL, gateway.url)
    out = driver.execute_async_script(_HARNESS + example)
    assert out == [
        ["log", "0", {"seq": 0, "value": "hi"}],
        ["log", "1", {"seq": 1, "value": "hi"}],
        ["log", "2", {"seq": 2, "value": "hi"}],
        ["log", "complete:", "count"],
    ]
    assert len(stream_requests(driver)) == 1


def test_every_event_of_a_long_stream_arrives_in_order(browser, gateway):
    driver = browser
    driver.get(gateway.url + "/healthz")
    url = stream_url(gateway.url, {"op": "stream", "count": 500, "value": "x" * 100}, replies=500)
    got = driver.execute_async_script(_READ_ALL, url)
    assert got["events"] == [
        [str(i), {"result": {"seq": i, "value": "x" * 100}}] for i in range(500)
    ]
    assert got["last"] == ["end", {"end": {"reason": "count"}}]
    assert len(stream_requests(driver)) == 1


def test_a_stream_broken_mid_way_ends_with_an_error_event(browser, gateway):
    driver = browser
    driver.get(gateway.url + "/healthz")
    payload = {"op": "stream", "count": 5, "value": 1, "delay": 0.4}
    got = driver.execute_async_script(_READ_ALL, stream_url(gateway.url, payload, timeout=0.6))
    assert got["events"][0] == ["0", {"result": {"seq": 0, "value": 1}}]
    name, data = got["last"]
    assert name == "error"
    assert data["error"]["type"] == "https://connbridge.dev/problems/backend-timeout"
    assert len(stream_requests(driver)) == 1
