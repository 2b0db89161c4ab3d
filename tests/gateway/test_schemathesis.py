"""Schemathesis against the gateway's own OpenAPI document: no server error, nothing undocumented.

The real app is served on a real port, in front of a real threaded demo
backend in a subprocess (reached as two backends: ``demo``, which takes any
payload, and ``adder``, whose ``payload_schema`` admits pairs of integers).
For every operation of the document the app serves, Schemathesis generates
requests that fit the document (positive) and requests that do not
(negative), sends them over HTTP and checks each response:

- no 5xx, except what the backend or the request asked for (see
  :func:`not_a_gateway_error`);
- the status is one the operation documents, the ``Content-Type`` too;
- the body matches the documented schema for that status.

Every check Schemathesis has runs too (:data:`CHECKS`), but its
``not_a_server_error``, which :func:`not_a_gateway_error` refines.

Bounded: at most :data:`MAX_EXAMPLES` requests per operation and mode (30,
or ``CONNBRIDGE_FUZZ_EXAMPLES``: ``make fuzz`` runs several hundred), each
call with a 5 s backend timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from gateway_support import PAIR_SCHEMA, key_file, problem_type, serve_gateway, sha256_hex
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from connbridge.demo import DemoBackend, spawn_demo_backend

MAX_EXAMPLES = int(os.environ.get("CONNBRIDGE_FUZZ_EXAMPLES", "30"))
#: How much longer than the default run this one may take.
SCALE = max(1.0, MAX_EXAMPLES / 30)
pytestmark = [pytest.mark.timeout(120 * SCALE), pytest.mark.slow]

AUTHKEY = b"schemathesis-demo-key"
API_KEY = "schemathesis-api-key"
PAIR = PAIR_SCHEMA
BACKEND_EXCEPTION = problem_type("backend-exception")
BACKEND_TIMEOUT = problem_type("backend-timeout")
#: What a request with a tiny ``timeout`` may get.
TIMED_OUT = {BACKEND_TIMEOUT, problem_type("pool-exhausted")}


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoBackend]:
    backend = spawn_demo_backend("127.0.0.1:0", AUTHKEY)
    try:
        yield backend
    finally:
        backend.close()


def gateway_settings(demo: DemoBackend, tmp_path: Path, *, keys: bool) -> dict[str, Any]:
    common = {
        "address": demo.address,
        "authkey_file": key_file(tmp_path, AUTHKEY),
        "call_timeout": 5.0,
    }
    settings: dict[str, Any] = {
        "gateway": {"default_backend": "demo"},
        "backends": {"demo": common, "adder": {**common, "payload_schema": PAIR}},
    }
    if keys:
        # Allowed on adder only: calls to demo answer 403.
        key = {"name": "fuzz", "sha256": sha256_hex(API_KEY), "backends": ["adder"]}
        settings["auth"] = {"keys": [key]}
    return settings


def _asked_timeout(case: Any) -> float | None:
    """The shortest limit the request asked for: its body's ``timeout`` or its header."""
    body = case.body
    timeout = body.get("timeout") if isinstance(body, dict) else None
    asked = [float(timeout)] if isinstance(timeout, int | float) else []
    with contextlib.suppress(TypeError, ValueError):
        asked.append(float((case.headers or {}).get("Request-Timeout", "nan")))
    return min((seconds for seconds in asked if seconds == seconds), default=None)  # no NaN


def not_a_gateway_error(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx, unless the backend or the request itself asked for it.

    Allowed: 502 ``backend-exception`` (the backend answered with an
    exception: relaying it is the gateway's job), 504 ``backend-timeout``
    when the request gave a ``timeout`` or a ``Request-Timeout`` under a
    second (Schemathesis likes ``1e-300``; with the default of 5 s the demo
    always answers in time), or
    503 ``pool-exhausted`` then: the timeout bounds the wait for a connection
    too, and the connection of the previous timed-out call may still be draining.
    """
    if response.status_code < 500:
        return
    kind = response.json().get("type") if response.status_code in (502, 503, 504) else None
    if kind == BACKEND_EXCEPTION:
        return
    asked = _asked_timeout(case)
    if kind in TIMED_OUT and asked is not None and asked < 1:
        return
    raise AssertionError(
        f"{case.method} {case.path} answered {response.status_code}: {response.text[:500]}"
    )


def invalid_data_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis's ``negative_data_rejection``, knowing that a batch refuses entries in place.

    ``POST /compute/batch`` answers 200 with a problem in the place of each
    entry it cannot run (documented, so that one bad entry does not lose the
    others): one entry holding a 4xx problem counts as the refusal. Anything
    else goes to Schemathesis's check.
    """
    if case.operation.path == "/compute/batch" and response.status_code == 200:
        results = response.json()["results"]
        if any(400 <= r["error"]["status"] < 500 for r in results if "error" in r):
            return None
    result: bool | None = negative_data_rejection(ctx, response, case)
    return result


CHECKS = [
    not_a_gateway_error,
    invalid_data_refused,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    *(
        check
        for check in schemathesis.checks.CHECKS.get_all()
        if check not in (not_a_server_error, negative_data_rejection, status_code_conformance)
        and check not in (content_type_conformance, response_schema_conformance)
    ),
]


def _has_inputs(operation: Any) -> bool:
    parts = ("body", "path_parameters", "query", "headers", "cookies")
    return any(len(getattr(operation, part)) for part in parts)


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    session: requests.Session,
    url: str,
    headers: dict[str, str],
) -> dict[str, int]:
    """Send up to MAX_EXAMPLES requests to one operation; count the statuses.

    Raises:
        schemathesis.core.failures.FailureGroup: a check failed (with a curl line).
    """
    counts: dict[str, int] = {}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # The same requests every run: a failure here is a finding, never noise.
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, session=session, headers=headers, timeout=15)
        key = f"{mode.value} {response.status_code}"
        counts[key] = counts.get(key, 0) + 1
        case.validate_response(response, checks=CHECKS)

    run()
    return counts


#: What the checks of accepted and refused data expect. A request that fits the
#: document may still be refused for what it means, which no schema can say: a
#: backend outside the key's scope (403) or unknown (404), a body naming another
#: backend than the path, a payload the codec refuses (422), the backend's own
#: exception (502) or a timeout the request asked for (504, or 503
#: ``pool-exhausted`` when it is too short to get a connection; the check
#: ``not_a_gateway_error`` allows no other 5xx). A request that does not fit
#: must get a 4xx.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2XX", "403", "404", "422", "502", "503", "504"]
            },
            "negative_data_rejection": {"expected-statuses": ["4XX"]},
        }
    }
)


def fuzz(url: str, document: dict[str, Any], headers: dict[str, str]) -> dict[str, dict[str, int]]:
    """Run every operation in both modes; return the statuses seen, per operation."""
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    seen: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            modes = [GenerationMode.POSITIVE]
            if _has_inputs(operation):
                # An operation with no body or parameters has no invalid request.
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                try:
                    counts = fuzz_operation(operation, mode, session, url, headers)
                except Exception as exc:
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
                else:
                    seen.setdefault(operation.label, {}).update(counts)
    assert not failures, "\n\n".join(failures)
    return seen


@pytest.mark.parametrize("keys", [False, True], ids=["open", "api-keys"])
async def test_schemathesis_finds_nothing(demo, tmp_path, keys):
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {API_KEY}"} if keys else {}
    async with serve_gateway(gateway_settings(demo, tmp_path, keys=keys)) as gw:
        document = (await gw.client.get("/openapi.json")).json()
        # Schemathesis is synchronous (requests): it runs in a thread while
        # this loop serves the gateway.
        seen = await asyncio.to_thread(fuzz, gw.url, document, headers)
    elapsed = time.monotonic() - started

    for label, counts in sorted(seen.items()):  # shown with -s (make fuzz)
        print(f"{label}: {sum(counts.values())} requests {dict(sorted(counts.items()))}")
    operations = {label.split(" ", 1)[1] for label in seen}
    assert operations == {
        "/compute",
        "/compute/batch",
        "/backends/demo/compute",
        "/backends/adder/compute",
        "/stream",
        "/backends/{name}/stream",
        "/backends",
        "/healthz",
        "/readyz",
        "/metrics",
    }, sorted(operations)
    # The run reached the backend: valid calls were answered, invalid refused.
    answered = ["POST /backends/adder/compute", "POST /compute/batch"]
    if keys:
        assert seen["POST /backends/demo/compute"].get("positive 403", 0) > 0, seen
    else:
        answered.append("POST /compute")
    for label in answered:
        assert seen[label].get("positive 200", 0) > 0, (label, seen[label])
    assert any(key.startswith("negative 4") for key in seen["POST /backends/adder/compute"])
    assert elapsed < 60 * SCALE, f"the run took {elapsed:.1f} s: {seen}"
