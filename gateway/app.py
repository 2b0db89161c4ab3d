"""The app factory: :func:`create_app` builds a FastAPI app from :class:`Settings`.

Nothing is created at import time. ``create_app`` prepares the state
(authkeys read, schemas compiled, routes registered); the app's lifespan
opens one :class:`~connbridge.pool.Pool` per backend on start-up and closes
them on shutdown, letting calls in flight finish within ``shutdown_grace``.

Middleware, outermost first: :class:`~gateway.log.AccessLogMiddleware`
(request id, access log, metrics, last-resort 500), then CORS when
``cors_origins`` is set. Errors are rendered by :mod:`gateway.problems`.

For servers other than our command line (``uvicorn --factory``, gunicorn),
:func:`app_from_environment` loads the configuration named by
``CONNBRIDGE_CONFIG``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from . import problems
from .docs import install_docs
from .log import AccessLogMiddleware
from .openapi import build_openapi
from .routes import backends, compute, health, metrics, ws
from .settings import Settings, load_settings
from .state import GatewayState

__all__ = ["app_from_environment", "create_app", "package_version"]

_DESCRIPTION = """\
An HTTP gateway to Python `multiprocessing.connection` Listener servers:
each call's JSON `payload` is pickled, sent to a backend over a pooled,
authenticated connection, and the backend's reply comes back as JSON.

Errors are RFC 9457 problem documents (`application/problem+json`).

The WebSocket endpoints (`/ws` for multiplexed calls, `/ws/session/{backend}`
for a bridged session) cannot be described in OpenAPI; their messages are in
the [AsyncAPI document](static/asyncapi.yaml), served by this gateway at
`/static/asyncapi.yaml`.
"""


def create_app(settings: Settings) -> FastAPI:
    """Build the gateway app for ``settings`` (pools open when the app starts).

    Raises:
        ConfigError: a backend's authkey cannot be read, or the settings
            are inconsistent (see :meth:`Settings.cross_check`).
    """
    state = GatewayState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="connbridge gateway",
        version=package_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.gateway = state

    def openapi() -> dict[str, Any]:
        return build_openapi(app, state)

    app.openapi = openapi  # type: ignore[method-assign]
    problems.install(app)
    app.include_router(compute.router(state))
    app.include_router(backends.router())
    app.include_router(health.router())
    app.include_router(metrics.router())
    ws.install(app, state)
    install_docs(app)

    origins = list(settings.gateway.cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "WWW-Authenticate"],
            max_age=600,
        )
    # Added last, so it is the outermost of ours: it sees every response.
    app.add_middleware(AccessLogMiddleware, metrics=state.metrics)
    return app


def app_from_environment() -> FastAPI:
    """``create_app(load_settings())``: for ``uvicorn --factory gateway.app:app_from_environment``.

    Raises:
        ConfigError: the configuration named by ``CONNBRIDGE_CONFIG`` is bad.
    """
    return create_app(load_settings())


def package_version() -> str:
    """The installed connbridge's version ("0" when it runs from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("connbridge")
    except PackageNotFoundError:
        return "0"
