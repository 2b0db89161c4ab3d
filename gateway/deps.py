"""Typed dependencies of the routes: the app's state and the caller behind the API key.

Each is an ``async def`` on purpose: FastAPI runs plain ``def``
dependencies in a thread pool, which would cost a thread hop per request.

The compute routes (the hot path) call :func:`gateway_state` and
:func:`authenticate` directly instead: resolving two nested dependencies
costs FastAPI about as much time as a whole no-op request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.applications import Starlette
from starlette.types import Scope

from .auth import ANONYMOUS, Principal
from .state import GatewayState

__all__ = [
    "Caller",
    "MetricsCaller",
    "State",
    "authenticate",
    "gateway_state",
    "header",
]


def gateway_state(app: Starlette) -> GatewayState:
    """The :class:`GatewayState` that :func:`gateway.app.create_app` attached to ``app``.

    Raises:
        RuntimeError: ``app`` was not made by ``create_app``.
    """
    state = getattr(app.state, "gateway", None)
    if not isinstance(state, GatewayState):
        raise RuntimeError("this app was not created by gateway.app.create_app")
    return state


async def _state(request: Request) -> GatewayState:
    return gateway_state(request.app)


State = Annotated[GatewayState, Depends(_state)]


def authenticate(request: Request, state: GatewayState) -> Principal:
    """The caller of an API request, from its ``Authorization`` header.

    Raises:
        Unauthorized: keys are configured and the request has no valid one.
    """
    keys = state.keys
    if not keys.enabled:
        return ANONYMOUS
    return keys.authenticate(header(request.scope, b"authorization"))


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` lower-case), latin-1 decoded.

    A direct scan of the raw headers: ``request.headers.get`` builds a
    Headers object and raises and catches a KeyError when the header is
    missing, which showed in profiles of the compute route.
    """
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _caller(request: Request, state: State) -> Principal:
    return authenticate(request, state)


#: The caller of an API route; 401 without a valid key (when keys are configured).
Caller = Annotated[Principal, Depends(_caller)]


async def _metrics_caller(request: Request, state: State) -> Principal | None:
    if state.settings.gateway.metrics_public:
        return None
    return authenticate(request, state)


#: The caller of ``/metrics``: like :data:`Caller` unless ``metrics_public`` is set.
MetricsCaller = Annotated[Principal | None, Depends(_metrics_caller)]
