"""``GET /backends``: the backends the caller may use, with health and pool statistics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from ..deps import Caller, State
from ..openapi import problem_responses
from ..schemas import BackendList

__all__ = ["router"]


def router() -> APIRouter:
    """The backends listing route."""
    api = APIRouter(tags=["backends"])

    @api.get(
        "/backends",
        operation_id="list_backends",
        summary="List the backends",
        description=(
            "Each backend the API key may use: addresses, limits, payload schema, health "
            "and pool statistics. Never a key."
        ),
        response_model=BackendList,
        responses=problem_responses(()),
    )
    async def list_backends(state: State, caller: Caller) -> Response:
        body = {"backends": state.describe_backends(caller)}
        return Response(orjson.dumps(body), media_type="application/json")

    return api
