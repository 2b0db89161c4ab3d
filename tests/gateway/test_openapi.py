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

import httpx
import pytest
from gateway_support import serve_gateway
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.cli import main
from gateway.docs import STATIC_DIR
from gateway.openapi_file import example_settings, render_openapi

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
STALE = "openapi/openapi.json is not what the app serves: run make openapi"


def committed_text() -> str:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing: run make openapi"
    return COMMITTED.read_text(encoding="utf-8")


def test_committed_document_is_what_make_openapi_writes():
    assert committed_text() == render_openapi(create_app(example_settings())), STALE


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
    async with serve_gateway(example_settings()) as gw:
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
    assert render_openapi(create_app(settings)) == committed_text(), STALE


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
    from gateway.settings import Settings

    document = json.loads(render_openapi(create_app(Settings.model_validate(settings))))
    validate(document)
    assert "securitySchemes" not in document.get("components", {})
    assert "/backends/a/compute" in document["paths"]
    assert "/backends/b/compute" in document["paths"]


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
