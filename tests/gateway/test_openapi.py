"""The committed OpenAPI document (gateway/openapi_file.py) and the offline docs (gateway/docs.py).

The committed ``openapi/openapi.json`` must be exactly what ``make openapi``
writes and what the app serves for the same (example) settings; it must be
a valid OpenAPI document. ``/docs`` and ``/redoc`` must load nothing from
another origin: every asset they name is served by the app, from the files
shipped in the package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from gateway_support import backend_config, serve_gateway
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.cli import main
from gateway.docs import STATIC_DIR
from gateway.openapi_file import (
    EXAMPLE_NOTE,
    example_app,
    example_settings,
    mark_as_example,
    render_openapi,
)
from gateway.settings import Settings
from tests.conftest import SERVERS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
STALE = "openapi/openapi.json is not what the app serves: run make openapi"


def committed_text() -> str:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing: run make openapi"
    return COMMITTED.read_text(encoding="utf-8")


def test_committed_document_is_what_make_openapi_writes():
    assert committed_text() == render_openapi(example_app()), STALE


def test_the_openapi_command_writes_the_committed_document(tmp_path, capsys):
    output = tmp_path / "doc" / "openapi.json"
    assert main(["openapi", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == committed_text()
    assert capsys.readouterr().out == f"wrote {output}\n"
    assert main(["openapi", str(output)]) == 0
    assert capsys.readouterr().out == f"{output} is up to date\n"
    # A path that cannot be written is reported, with status 1.
    assert main(["openapi", str(output / "below-a-file.json")]) == 1
    assert "cannot write" in capsys.readouterr().err


async def test_committed_document_is_what_the_app_serves():
    async with serve_gateway(example_settings(), setup=mark_as_example) as gw:
        response = await gw.client.get("/openapi.json")
    assert response.status_code == 200
    assert json.loads(committed_text()) == response.json(), STALE


def test_committed_document_is_stable_text():
    text = committed_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    document = json.loads(text)
    # Sorted keys and a two-space indent: a diff shows only real changes.
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_committed_document_is_valid_openapi():
    document = json.loads(committed_text())
    validate(document)
    # The example's per-backend operation shows its payload schema.
    operation = document["paths"]["/backends/adder/compute"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ComputeRequest.adder"}
    payload = document["components"]["schemas"]["Payload.adder"]
    assert payload["items"] == {"type": "integer"}


def test_example_settings_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("CONNBRIDGE_GATEWAY__MAX_BODY_BYTES", "12345")
    monkeypatch.setenv("CONNBRIDGE_BACKENDS__ADDER__CALL_TIMEOUT", "1.5")
    settings = example_settings()
    assert settings.gateway.max_body_bytes != 12345
    assert settings.backends["adder"].pool.call_timeout == 5.0
    app = create_app(settings)
    mark_as_example(app)
    assert render_openapi(app) == committed_text(), STALE


def test_other_configurations_give_valid_documents(tmp_path):
    # No keys, no schema, two backends, one of them without a schema: the
    # shapes example_settings does not cover.
    settings = {
        "gateway": {"default_backend": "b"},
        "backends": {
            "a": {"address": "127.0.0.1:1", "payload_schema": {"type": "string"}},
            "b": {"address": ["unix:/nonexistent/b.sock", "[::1]:2"]},
        },
    }
    document = json.loads(render_openapi(create_app(Settings.model_validate(settings))))
    validate(document)
    assert "securitySchemes" not in document.get("components", {})
    assert "/backends/a/compute" in document["paths"]
    assert "/backends/b/compute" in document["paths"]


def document_of(settings: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        render_openapi(create_app(Settings.model_validate(settings)))
    )
    validate(document)
    return document


def own_components(document: dict[str, Any]) -> dict[str, Any]:
    """The gateway's schemas: all but the users' payload schemas."""
    schemas = document["components"]["schemas"]
    return {name: s for name, s in schemas.items() if not name.startswith("Payload.")}


def test_committed_document_says_it_is_an_example():
    info = json.loads(committed_text())["info"]
    assert info["description"].startswith(EXAMPLE_NOTE)
    words = " ".join(EXAMPLE_NOTE.split())
    assert words.startswith("**This document is an example.**")
    assert "from an example configuration: a backend `adder`" in words
    assert "It is not the document of your gateway" in words
    assert "at `/openapi.json`" in words
    # A gateway serves its own document, without the note.
    own = json.loads(render_openapi(create_app(example_settings())))
    assert "This document is an example" not in own["info"]["description"]
    assert info["description"] == EXAMPLE_NOTE + "\n" + own["info"]["description"]


def test_optional_properties_have_no_default():
    # openapi-typescript 7 (default options) makes every property with a
    # default required: {"payload": [5, 6]} would not compile.
    for document in (json.loads(committed_text()), document_of(NO_KEYS)):
        for name, schema in own_components(document).items():
            required = set(schema.get("required", ()))
            for prop, value in schema.get("properties", {}).items():
                if prop not in required:
                    assert "default" not in value, (name, prop)
        schemas = document["components"]["schemas"]
        for name in ("ComputeRequest", "StreamRequest"):
            assert schemas[name]["required"] == ["payload"], name
        # A default other than null stays, in words.
        result_format = schemas["ComputeRequest"]["properties"]["result_format"]
        assert result_format["description"].endswith(" Default: `json`.")
        assert schemas["MethodCall"]["properties"]["args"]["description"].endswith("Default: `[]`.")
    # A user's payload schema is shown as configured, defaults and all.
    payload = {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}}
    settings = {"backends": {"a": {"address": "127.0.0.1:1", "payload_schema": payload}}}
    assert document_of(settings)["components"]["schemas"]["Payload.a"] == payload


NO_KEYS: dict[str, Any] = {
    "gateway": {"default_backend": "a"},
    "backends": {"a": {"address": "127.0.0.1:1"}, "b": {"address": "127.0.0.1:2"}},
}
#: Operations no key is asked for, whatever the configuration.
PUBLIC = {("get", "/healthz"), ("get", "/readyz")}
#: Operations that name a backend, and can be refused one by a scoped key.
SCOPE_CHECKED = {
    ("post", "/compute"),
    ("post", "/backends/a/compute"),
    ("post", "/backends/b/compute"),
    ("post", "/stream"),
    ("post", "/backends/{name}/stream"),
    ("get", "/backends/{name}/stream"),
}


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _with_keys(*scopes: list[str]) -> dict[str, Any]:
    keys = [
        {"name": f"k{i}", "sha256": hashlib.sha256(b"k%d" % i).hexdigest(), "backends": scope}
        for i, scope in enumerate(scopes)
    ]
    return {**NO_KEYS, "auth": {"keys": keys}}


def test_no_keys_no_401_403_nor_access_token():
    document = document_of(NO_KEYS)
    assert "securitySchemes" not in document["components"]
    for where, operation in _operations(document).items():
        assert "security" not in operation, where
        assert not {"401", "403"} & set(operation["responses"]), where
        names = [p["name"] for p in operation.get("parameters", ())]
        assert "access_token" not in names, where


def test_keys_bring_401_where_a_key_is_asked_for_and_403_where_a_scope_is_checked():
    everything = document_of(_with_keys(["*"]))
    scoped = document_of(_with_keys(["*"], ["a"]))
    for document, refusable in ((everything, set()), (scoped, SCOPE_CHECKED)):
        operations = _operations(document)
        assert set(operations) >= SCOPE_CHECKED
        for where, operation in operations.items():
            statuses = set(operation["responses"])
            if where in PUBLIC:
                assert "security" not in operation, where
                assert not {"401", "403"} & statuses, where
                continue
            assert operation["security"] == [{"apiKey": []}], where
            assert "401" in statuses, where
            # 403 only where a key limited to some backends can be refused one.
            assert ("403" in statuses) == (where in refusable), where
        stream = operations[("get", "/backends/{name}/stream")]
        assert "access_token" in [p["name"] for p in stream["parameters"]]
    # The object routes of a manager backend check the scope as well.
    settings = _with_keys(["a"])
    settings["backends"]["jobs"] = {
        "kind": "manager",
        "address": "127.0.0.1:3",
        "typeids": ["q"],
        "methods": {"q": ["get"]},
    }
    operations = _operations(document_of(settings))
    for where, operation in operations.items():
        if "/objects" in where[1]:
            assert "403" in operation["responses"], where
    for where in (("get", "/backends"), ("get", "/metrics"), ("post", "/compute/batch")):
        assert "403" not in operations[where]["responses"], where
    # Public metrics ask for no key.
    settings["gateway"] = {**settings["gateway"], "metrics_public": True}
    metrics = _operations(document_of(settings))[("get", "/metrics")]
    assert "security" not in metrics and "401" not in metrics["responses"]


def test_health_readiness_and_statistics_are_typed():
    schemas = json.loads(committed_text())["components"]["schemas"]
    ref = "#/components/schemas/"
    readiness = schemas["Readiness"]["properties"]["backends"]["additionalProperties"]
    assert readiness == {"$ref": ref + "BackendReadiness"}
    info = schemas["BackendInfo"]["properties"]
    assert info["health"] == {"$ref": ref + "BackendHealth"}
    assert info["stats"] == {"$ref": ref + "PoolStatistics"}
    assert schemas["PoolStatistics"]["properties"]["addresses"]["items"] == {
        "$ref": ref + "AddressState"
    }
    for name in ("Health", "Readiness", "BackendReadiness", "BackendInfo", "PoolStatistics"):
        # Not an open dict: a generated client gets the named fields only.
        assert "additionalProperties" not in schemas[name], name
    document = json.loads(committed_text())
    not_ready = document["paths"]["/readyz"]["get"]["responses"]["503"]["content"]
    assert not_ready["application/problem+json"]["schema"] == {"$ref": ref + "NotReadyProblem"}


def _closed(schema: Any) -> Any:
    """``schema`` with every object that does not say otherwise closed to other keys."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


async def test_health_readiness_and_statistics_show_only_documented_keys(start_backend, tmp_path):
    # Every key /healthz, /readyz and /backends write is in their schemas: a
    # generated client sees all of it, typed. A backend up, one that never
    # answers, and a manager backend.
    demo = start_backend("demo")
    manager = start_backend(str(SERVERS / "manager.py"))
    settings = {
        "gateway": {"default_backend": "demo"},
        "backends": {
            "demo": backend_config(demo, tmp_path),
            "m": backend_config(manager, tmp_path, kind="manager", typeids=["*"]),
            "gone": {"address": f"unix:{tmp_path}/nothing.sock"},
        },
    }
    async with serve_gateway(settings) as gw:
        document = (await gw.client.get("/openapi.json")).json()
        components = _closed(document["components"])
        assert (await gw.client.post("/compute", json={"payload": [1, 2]})).status_code == 200
        seen = []
        for path, status, component in [
            ("/healthz", 200, "Health"),
            ("/readyz", 503, "NotReadyProblem"),
            ("/backends", 200, "BackendList"),
        ]:
            response = await gw.client.get(path)
            assert response.status_code == status, response.text
            schema = {"$ref": f"#/components/schemas/{component}", "components": components}
            jsonschema.Draft202012Validator(schema).validate(response.json())
            seen.append(response.json())
    # The shapes that matter were there: an address down with its error, a manager's keys.
    backends = {b["name"]: b for b in seen[2]["backends"]}
    gone = backends["gone"]["stats"]["addresses"][0]
    assert gone["state"] == "down" and "last_error" in gone and "retry_in_s" in gone
    assert {"typeids", "methods", "object_ttl", "objects"} <= set(backends["m"])
    assert seen[1]["backends"]["demo"]["ready"] is True


# -- the docs pages -------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"""\b(?:src|href|spec-url)="([^"]*)\"""")
_URL_IN_SCRIPT = re.compile(r"""\burl:\s*'([^']*)'""")
_INLINE = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_shipped_assets(page):
    async with serve_gateway(example_settings()) as gw:
        response = await gw.client.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        links = _ATTRIBUTE.findall(html) + _URL_IN_SCRIPT.findall(html)
        assert "/openapi.json" in links
        assets = [link for link in links if link != "/openapi.json"]
        assert assets, html
        for link in assets:
            # Same origin, absolute path: nothing from a CDN.
            assert link.startswith("/static/"), link
            served = await gw.client.get(link)
            assert served.status_code == 200, link
            shipped = STATIC_DIR / link.removeprefix("/static/")
            assert served.content == shipped.read_bytes(), link
        assert "fonts.googleapis.com" not in html

        policy = response.headers["content-security-policy"]
        assert not re.search(r"https?:|\*", policy), policy
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert "'unsafe-inline'" not in directives["script-src"]
        for script in _INLINE.findall(html):
            assert _csp_hash(script) in directives["script-src"]


async def test_docs_assets_have_their_types():
    async with serve_gateway(example_settings()) as gw:
        for path, media_type in [
            ("/static/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
            ("/static/swagger-ui/swagger-ui.css", "text/css"),
            ("/static/redoc/redoc.standalone.js", "text/javascript"),
            ("/static/swagger-ui/favicon-32x32.png", "image/png"),
        ]:
            response = await gw.client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].split(";")[0] == media_type, path
        missing = await gw.client.get("/static/nothing-here.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # Nothing outside gateway/static, however the path is spelled.
        for escape in ("/static/%2e%2e/docs.py", "/static/swagger-ui/..%2f..%2fdocs.py"):
            response = await gw.client.get(escape)
            assert response.status_code == 404, escape
            assert b"install_docs" not in response.content
        # One metrics label for all of them, not one per file.
        metrics = await gw.client.get("/metrics", headers={"Authorization": "Bearer example-key"})
        lines = [line for line in metrics.text.splitlines() if "/static" in line]
        assert 'route="/static",status="200"} 4.0' in "\n".join(lines), lines
        assert "swagger" not in "\n".join(lines)


async def test_docs_follow_the_root_path():
    # Behind a proxy that strips /api, the page must link /api/static/... (no
    # lifespan needed for a docs page: the app is called directly).
    app = create_app(example_settings())
    transport = httpx.ASGITransport(app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        html = (await client.get("/docs")).text
    assert "/api/static/swagger-ui/swagger-ui-bundle.js" in html
    assert "'/api/openapi.json'" in html


def test_shipped_assets_carry_their_licenses():
    for folder, expected in [("swagger-ui", "Apache License"), ("redoc", "MIT License")]:
        license_text = (STATIC_DIR / folder / "LICENSE").read_text(encoding="utf-8")
        assert expected in license_text
    readme = (STATIC_DIR / "README.md").read_text(encoding="utf-8")
    for name in ("swagger-ui-dist", "redoc"):
        assert name in readme
