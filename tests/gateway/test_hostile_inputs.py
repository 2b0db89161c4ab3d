"""Inputs that used to be answered with a 500: each now gets a 4xx problem.

Against the served app and a real demo backend. Each case names the input
that was a 500 before (issue 13) and asserts the problem that answers it now.
"""

from __future__ import annotations

import json

import pytest
from gateway_support import PROBLEM, backend_config, problem_type, serve_gateway
from ws_support import open_ws, recv_json

pytestmark = pytest.mark.timeout(60)

#: A start offset beyond a C ssize_t: ``UnicodeEncodeError(...)`` raises OverflowError.
OVERFLOWING = {
    "$exception": {
        "type": "UnicodeEncodeError",
        "args": ["utf-8", "x", 1267650600228229401496703205376, 1, "r"],
    }
}


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def nested(depth: int) -> str:
    """``depth`` nested arrays around 1, as JSON text (deeper than json.dumps can write)."""
    return "[" * depth + "1" + "]" * depth


async def post_text(gw, path: str, text: str):
    return await gw.client.post(
        path, content=text.encode(), headers={"content-type": "application/json"}
    )


async def test_exception_args_that_cannot_be_built(demo, tmp_path):
    async with serve_gateway({"backends": {"demo": backend_config(demo, tmp_path)}}) as gw:
        response = await gw.client.post("/compute", json={"payload": OVERFLOWING})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["type"] == problem_type("invalid-payload")
        assert body["errors"][0]["pointer"] == "#/payload/$exception"
        assert "cannot create UnicodeEncodeError" in body["detail"]

        batch = {"requests": [{"payload": OVERFLOWING}, {"payload": [1, 2]}]}
        response = await gw.client.post("/compute/batch", json=batch)
        assert response.status_code == 200
        first, second = response.json()["results"]
        assert first["error"]["status"] == 422
        assert first["error"]["type"] == problem_type("invalid-payload")
        assert first["error"]["errors"][0]["pointer"] == "#/requests/0/payload/$exception"
        assert second["result"] == 3

        async with open_ws(gw) as ws:
            await ws.send(json.dumps({"id": 1, "payload": OVERFLOWING}))
            reply = await recv_json(ws)
            assert reply["id"] == 1
            assert reply["error"]["type"] == problem_type("invalid-payload")


@pytest.mark.parametrize("digits", [310, 1000, 4300])
async def test_integers_beyond_a_double(demo, tmp_path, digits):
    big = int("7" * digits)
    async with serve_gateway({"backends": {"demo": backend_config(demo, tmp_path)}}) as gw:
        body = b'{"payload": [' + str(big).encode() + b', 1], "result_format": "tagged"}'
        response = await gw.client.post(
            "/compute", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["result"] == {"$int": str(big + 1)}
        # Past Python's own limit, a clear 400 (not a 500).
        body = b'{"payload": [' + b"9" * 4301 + b", 1]}"
        response = await gw.client.post(
            "/compute", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["type"] == problem_type("malformed-json")


@pytest.mark.parametrize("depth", [300, 1000])
async def test_a_deep_payload_under_a_recursive_schema(demo, tmp_path, depth):
    # jsonschema validates recursively: a "$ref": "#" schema and 300 nested
    # arrays were a RecursionError, a 500 and a traceback per request.
    schema = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}
    backend = backend_config(demo, tmp_path, payload_schema=schema)
    async with serve_gateway({"backends": {"demo": backend}}) as gw:
        response = await post_text(gw, "/compute", '{"payload": ' + nested(depth) + "}")
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["type"] == problem_type("invalid-payload")
        assert "too deep" in body["detail"]
        batch = '{"requests": [{"payload": ' + nested(depth) + '}, {"payload": [1, 2]}]}'
        response = await post_text(gw, "/compute/batch", batch)
        deep, shallow = response.json()["results"]
        assert deep["error"]["status"] == 422
        assert "too deep" in deep["error"]["detail"]
        assert shallow["result"] == 3
        # A shallow payload still goes through the same schema.
        response = await gw.client.post("/compute", json={"payload": {"op": "echo", "value": 1}})
        assert response.status_code == 422  # an object: refused by the schema itself
        assert "too deep" not in response.json()["detail"]
