"""``GET /metrics``: Prometheus text from the app's own registry (see :mod:`gateway.metrics`).

It needs an API key (any scope) when keys are configured, unless
``[gateway] metrics_public = true``. A key scoped to some backends sees only
their series (see :mod:`gateway.metrics`); with ``metrics_public`` everyone
sees every series.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import MetricsCaller, State
from ..metrics import CONTENT_TYPE

__all__ = ["router"]


def router() -> APIRouter:
    """The metrics route."""
    api = APIRouter(tags=["metrics"])

    @api.get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics",
        description="Requests, latencies and pool gauges in the Prometheus text format.",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics(state: State, caller: MetricsCaller) -> Response:
        scope = None if caller is None else caller.backends
        return Response(state.metrics.render(scope), media_type=CONTENT_TYPE)

    return api
