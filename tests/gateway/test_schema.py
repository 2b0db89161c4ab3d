"""A backend's payload_schema: enforced before the call, shown in the OpenAPI document."""

from __future__ import annotations

import pytest
from gateway_support import PAIR_SCHEMA, backend_config, problem_type, serve_gateway

pytestmark = pytest.mark.timeout(60)

PAIR = PAIR_SCHEMA


@pytest.fixture(scope="module")
def classic(start_shared_backend):
    # The classic server dies on anything but a pair: the schema keeps it alive.
    return start_shared_backend("classic")


@pytest.fixture
def settings(classic, tmp_path):
    return {
        "backends": {
            "adder": backend_config(classic, tmp_path, payload_schema=PAIR, max_connections=1)
        }
    }


async def test_schema_refuses_before_the_backend_sees_it(settings, classic):
    async with serve_gateway(settings) as gw:
        for route in ("/compute", "/backends/adder/compute"):
            response = await gw.client.post(route, json={"payload": [1, "x"]})
            assert response.status_code == 422
            body = response.json()
            assert body["type"] == problem_type("invalid-payload")
            assert body["errors"][0]["pointer"] == "#/payload/1"
            assert body["errors"][0]["schema_path"] == "#/items/type"
            assert "#/payload/1" in body["detail"]
            assert body["backend"] == "adder"
        response = await gw.client.post("/compute", json={"payload": [1, 2, 3]})
        assert response.json()["errors"][0]["pointer"] == "#/payload"
        response = await gw.client.post(
            "/compute/batch", json={"requests": [{"payload": [1]}, {"payload": [1, 2]}]}
        )
        results = response.json()["results"]
        assert results[0]["error"]["errors"][0]["pointer"] == "#/requests/0/payload"
        assert results[1]["result"] == 3
        response = await gw.client.post("/compute", json={"payload": [20, 22]})
        assert response.json()["result"] == 42
    assert classic.alive(), classic.output()


async def test_schema_in_openapi(settings):
    async with serve_gateway(settings) as gw:
        document = (await gw.client.get("/openapi.json")).json()
    operation = document["paths"]["/backends/adder/compute"]["post"]
    media = operation["requestBody"]["content"]["application/json"]
    assert media["schema"] == {"$ref": "#/components/schemas/ComputeRequest.adder"}
    assert media["example"] == {"payload": [5, 6]}
    schemas = document["components"]["schemas"]
    assert schemas["Payload.adder"] == PAIR
    request = schemas["ComputeRequest.adder"]
    assert request["properties"]["payload"] == {"$ref": "#/components/schemas/Payload.adder"}
    assert request["required"] == ["payload"]
    generic = document["paths"]["/compute"]["post"]["requestBody"]["content"]["application/json"]
    assert generic["schema"] == {"$ref": "#/components/schemas/ComputeRequest"}
    assert "/backends/{name}/compute" not in document["paths"]
    # Every reference resolves.
    text = str(document)
    for name in schemas:
        assert name in text
    import re

    for ref in re.findall(r"#/components/schemas/([^'\"]+)", text):
        assert ref in schemas, ref
