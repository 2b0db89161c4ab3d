"""The interactive API docs (``/docs``, ``/redoc``), served from the package.

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

The committed ``openapi/openapi.json`` is written by
``connbridge-gateway openapi`` (:mod:`gateway.openapi_file`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .context import set_route

__all__ = ["DOCS_PATH", "REDOC_PATH", "STATIC_DIR", "STATIC_PATH", "install_docs"]

#: Where the shipped assets live in the package, and where they are served.
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_PATH: Final = "/static"
DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"

_SWAGGER_JS: Final = "swagger-ui/swagger-ui-bundle.js"
_SWAGGER_CSS: Final = "swagger-ui/swagger-ui.css"
_REDOC_JS: Final = "redoc/redoc.standalone.js"
_FAVICON: Final = "swagger-ui/favicon-32x32.png"

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


#: Types the standard library's table may not know, so that a browser shows
#: the file (the AsyncAPI document linked from /docs) instead of downloading it.
_MEDIA_TYPES: Final = {".yaml": "application/yaml", ".yml": "application/yaml"}


class _Assets(StaticFiles):
    """The shipped files, counted in the metrics and access log under the route ``/static``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        set_route(scope, STATIC_PATH)
        await super().__call__(scope, receive, send)

    def file_response(self, full_path: Any, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        media_type = _MEDIA_TYPES.get(os.path.splitext(str(full_path))[1])
        if media_type is not None:
            response.media_type = media_type
            response.headers["content-type"] = f"{media_type}; charset=utf-8"
        return response


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
