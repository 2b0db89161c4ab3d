"""Hypothesis: ``$``-tagged payloads of random nesting and size never get a 500.

Payloads mix well-formed and malformed tagged values (every tag, unknown
tags, wrong shapes, huge integers, exception args a constructor refuses),
nested up to a few hundred levels, and go through ``POST /compute``,
``/compute/batch`` and ``/ws`` to a real demo backend, which echoes them
back through the codec. Every answer must be a result or a problem of a
documented kind: never a 500 (``internal-error``), never a 5xx the gateway
made up.

Bounded: :data:`EXAMPLES` payloads (``CONNBRIDGE_FUZZ_PAYLOADS``, which
``make fuzz`` raises), each call with a 30 s backend timeout.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
from collections import Counter
from typing import Any

import httpx
import hypothesis
import pytest
from gateway_support import PROBLEM, backend_config, problem_type, serve_gateway
from hypothesis import strategies as st
from websockets.sync.client import connect

EXAMPLES = int(os.environ.get("CONNBRIDGE_FUZZ_PAYLOADS", "60"))
pytestmark = [pytest.mark.timeout(120 + EXAMPLES // 2), pytest.mark.slow]

#: The 5xx a payload may lead to: the backend's own answer, or a reply with no JSON form.
ALLOWED_5XX = {problem_type("backend-exception"), problem_type("unconvertible-result")}
EXCEPTIONS = sorted(
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
)
TAGS = [
    "$tuple", "$set", "$frozenset", "$dict", "$bytes", "$bytearray", "$int", "$float", "$complex",
    "$decimal", "$fraction", "$datetime", "$date", "$time", "$timedelta", "$uuid", "$exception",
]  # fmt: skip

numbers = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.builds(lambda n: int("7" * n), st.integers(1, 4300))
)
texts = st.text(max_size=40) | st.sampled_from(
    ["nan", "inf", "-inf", "1/0", "1/3", "-0", "1e999999", "2024-02-29T12:00:00+00:00:00.000001",
     "86400.000001", "AP8=", "not base64", "12:00", "0" * 500, "1" * 4301, "\ud800"]
)  # fmt: skip
scalars = st.none() | st.booleans() | numbers | texts


def tagged(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A single-key ``$`` object: a known tag (well or badly formed) or an unknown one."""
    exception = st.fixed_dictionaries(
        {"type": st.sampled_from(EXCEPTIONS) | texts},
        optional={"args": st.lists(children | numbers, max_size=6)},
    )
    payload = children | st.lists(children, max_size=5) | exception
    return st.builds(
        lambda tag, value: {tag: value},
        st.sampled_from(TAGS) | st.from_regex(r"\$[a-z]{0,6}", fullmatch=True),
        payload,
    )


values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=8)
        | st.dictionaries(st.text(max_size=6), children, max_size=5)
        | tagged(children)
    ),
    max_leaves=40,
)


def deep(value: Any, levels: int, tag: str | None) -> Any:
    for _ in range(levels):
        value = [value] if tag is None else {tag: [value]}
    return value


payloads = values | st.builds(
    deep, values, st.integers(0, 400), st.none() | st.sampled_from(["$tuple", "$set", "$dict"])
)


def check(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    assert response.headers["content-type"] == PROBLEM, response.text[:300]
    if status >= 500:
        assert response.json()["type"] in ALLOWED_5XX, response.text[:500]


def check_problem(problem: dict[str, Any]) -> None:
    if problem["status"] >= 500:
        assert problem["type"] in ALLOWED_5XX, problem


def dumps(value: Any) -> str:
    # json.dumps keeps big integers and writes lone surrogates as \ud800 escapes.
    return json.dumps(value)


def fuzz(url: str) -> Counter[int]:
    """Send the examples; count the statuses of ``POST /compute``."""
    seen: Counter[int] = Counter()
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        connect(url.replace("http", "ws", 1) + "/ws", open_timeout=10) as ws,
    ):

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(payload=payloads, echo=st.booleans())
        def run(payload: Any, echo: bool) -> None:
            body = {"op": "echo", "value": payload} if echo else payload
            try:
                text = dumps({"payload": body, "result_format": "tagged"})
            except (RecursionError, ValueError):
                hypothesis.reject()
            headers = {"content-type": "application/json"}
            response = client.post("/compute", content=text, headers=headers)
            check(response)
            seen[response.status_code] += 1
            batch = '{"requests": [' + text + ', {"payload": [1, 2]}]}'
            response = client.post("/compute/batch", content=batch, headers=headers)
            check(response)
            if response.status_code == 200:
                first, second = response.json()["results"]
                if "error" in first:
                    check_problem(first["error"])
                assert second["result"] == 3
            ws.send('{"id": 1, ' + text[1:])
            reply = json.loads(ws.recv(timeout=30))
            # No id when the message cannot be read at all (a lone surrogate in its JSON).
            assert reply["id"] == 1 or reply["error"]["status"] == 400, reply
            if "error" in reply:
                check_problem(reply["error"])

        run()
    return seen


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


async def test_tagged_payloads_never_get_a_500(demo, tmp_path):
    # A generous timeout: a 504 on a loaded machine would be noise, not a finding.
    settings = {"backends": {"demo": backend_config(demo, tmp_path, call_timeout=30.0)}}
    async with serve_gateway(settings) as gw:
        seen = await asyncio.to_thread(fuzz, gw.url)
        # A payload the gateway could not handle would also show in the metrics.
        assert b'status="500"' not in gw.state.metrics.render()
    print("statuses of POST /compute:", dict(seen))
    assert seen.total() >= EXAMPLES // 2, seen
    # Both kinds were reached: payloads the codec took (and the demo echoed), and refusals.
    assert seen[200] > 0 and seen[422] > 0, seen
