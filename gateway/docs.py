"""The interactive API docs (``/docs``, ``/redoc``) and the committed OpenAPI document.

:func:`gateway.app.create_app` calls :func:`install_docs` once. It adds:

- ``GET /docs``: Swagger UI, where each operation can be tried from the browser;
- ``GET /redoc``: the same document read by ReDoc;
- ``/static/...``: the JavaScript, CSS and icon those pages load.

The pages must work on a machine with no internet, so every asset is
shipped in the package (``gateway/static``, see the README there for the
versions and licenses) and none is fetched from a CDN. A
Content-Security-Policy on both pages makes the browser refuse anything
from another origin: ReDoc's bundle links a logo from its vendor's CDN, and
this is what keeps that request from being made. The pages' one inline
script is allowed by its hash, not by ``'unsafe-inline'``.

``python -m gateway.docs [PATH]`` (``make openapi``) writes the OpenAPI
document of the app built from :data:`EXAMPLE_CONFIG` to ``PATH`` (default
``openapi/openapi.json``): a fixed configuration, so the file is the same on
every machine, with one backend that has a ``payload_schema`` so that the
per-backend operation appears. ``tests/gateway/test_openapi.py`` fails when
the committed file differs from what the app serves.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .log import request_context
from .settings import Settings

__all__ = [
    "DOCS_PATH",
    "EXAMPLE_CONFIG",
    "REDOC_PATH",
    "STATIC_DIR",
    "STATIC_PATH",
    "example_settings",
    "install_docs",
    "main",
    "render_openapi",
]

#: Where the shipped assets live in the package, and where they are served.
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_PATH: Final = "/static"
DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"

_SWAGGER_JS: Final = "swagger-ui/swagger-ui-bundle.js"
_SWAGGER_CSS: Final = "swagger-ui/swagger-ui.css"
_REDOC_JS: Final = "redoc/redoc.standalone.js"
_FAVICON: Final = "swagger-ui/favicon-32x32.png"

#: The configuration behind ``openapi/openapi.json``. Nothing in it is read
#: from the machine: no authkey source (the document never shows one), and
#: the API key entry holds the SHA-256 of the string "example-key".
EXAMPLE_CONFIG: Final[dict[str, Any]] = {
    "gateway": {"default_backend": "adder"},
    "backends": {
        "adder": {
            "address": "127.0.0.1:11111",
            "call_timeout": 5.0,
            "max_connections": 4,
            "payload_schema": {
                "title": "Two integers to add",
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "examples": [[5, 6]],
            },
        }
    },
    "auth": {
        "keys": [
            {
                "name": "example",
                "sha256": hashlib.sha256(b"example-key").hexdigest(),
                "backends": ["*"],
            }
        ]
    },
}

_DEFAULT_OUTPUT: Final = "openapi/openapi.json"

# An inline <script> (one with no src attribute), to allow it by its hash.
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _content_security_policy(html: str) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    directives = [
        "default-src 'self'",
        f"script-src 'self' {hashes}".rstrip(),
        # Both UIs set inline styles from JavaScript.
        "style-src 'self' 'unsafe-inline'",
        # Swagger UI draws its icons as data: images.
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        # ReDoc runs its search index in a worker made from a blob: URL.
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


class _Assets(StaticFiles):
    """The shipped files, counted in the metrics and access log under the route ``/static``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = request_context(scope)
        if context is not None:
            context.route = STATIC_PATH
        await super().__call__(scope, receive, send)


def _page(html: HTMLResponse) -> HTMLResponse:
    body = bytes(html.body).decode()
    return HTMLResponse(
        body,
        headers={
            "Content-Security-Policy": _content_security_policy(body),
            "Cache-Control": "no-cache",
        },
    )


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets (under ``/static``) from ``app``.

    The app must be created with ``docs_url=None`` and ``redoc_url=None``
    (FastAPI's own pages load their assets from a CDN).

    Raises:
        RuntimeError: the assets directory is missing (a broken install).
    """
    app.mount(STATIC_PATH, _Assets(directory=STATIC_DIR), name="static")
    openapi_url = app.openapi_url or "/openapi.json"

    def prefix(request: Request) -> str:
        # Behind a proxy that strips a path prefix, links must keep it.
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        static = root + STATIC_PATH + "/"
        return _page(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=static + _SWAGGER_JS,
                swagger_css_url=static + _SWAGGER_CSS,
                swagger_favicon_url=static + _FAVICON,
                oauth2_redirect_url=None,
                # Swagger UI would send the document to its vendor's validator.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        static = root + STATIC_PATH + "/"
        return _page(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=static + _REDOC_JS,
                redoc_favicon_url=static + _FAVICON,
                with_google_fonts=False,
            )
        )


class _ExampleSettings(Settings):
    """:class:`Settings` made from their arguments only: no ``CONNBRIDGE_*`` variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def example_settings() -> Settings:
    """:data:`EXAMPLE_CONFIG` as settings, whatever the environment says.

    Raises:
        pydantic.ValidationError: only if :data:`EXAMPLE_CONFIG` itself is broken.
    """
    return _ExampleSettings(**EXAMPLE_CONFIG)


def render_openapi(app: FastAPI) -> str:
    """The OpenAPI document of ``app`` as written to ``openapi/openapi.json``.

    Sorted keys, two-space indent, non-ASCII kept, one trailing newline: the
    same document always gives the same bytes.
    """
    # Through JSON first, as the app serves it: that turns any int keys
    # (status codes) into strings, which sort_keys needs.
    document = json.loads(json.dumps(app.openapi()))
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the example app's OpenAPI document (``make openapi``); return the exit status."""
    from .app import create_app

    parser = argparse.ArgumentParser(
        prog="python -m gateway.docs",
        description="Write the OpenAPI document of the gateway built from the example settings.",
    )
    parser.add_argument("output", nargs="?", default=_DEFAULT_OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    text = render_openapi(create_app(example_settings()))
    output = Path(args.output)
    if output.is_file() and output.read_text(encoding="utf-8") == text:
        print(f"{output} is up to date")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
