"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the backends can be reached).

Readiness comes from the pools: :attr:`Pool.ready` when their state says an
address works, else :meth:`Pool.check`, which tries a real authenticated
connection and never a bare TCP connect (that kills fragile servers). The
gateway is ready when *every* backend is; otherwise 503 with a
``not-ready`` problem whose ``backends`` member gives each one's health.
Neither route needs an API key.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from connbridge.pool import PoolHealth

from ..deps import State
from ..openapi import problem_responses
from ..problems import NotReady
from ..schemas import Health, Readiness
from ..state import Backend

__all__ = ["router"]

_OK: Final = orjson.dumps({"status": "ok"})


async def _probe(backend: Backend, timeout: float) -> tuple[bool, PoolHealth]:
    pool = backend.pool
    if pool is None:
        return False, {"status": "unknown"}
    ready = pool.ready or await pool.check(timeout)
    return ready, pool.health()


def router() -> APIRouter:
    """The liveness and readiness routes."""
    api = APIRouter(tags=["health"])

    @api.get(
        "/healthz",
        operation_id="healthz",
        summary="Liveness",
        description="200 while the process answers. Needs no API key.",
        response_model=Health,
    )
    async def healthz() -> Response:
        return Response(_OK, media_type="application/json")

    @api.get(
        "/readyz",
        operation_id="readyz",
        summary="Readiness",
        description=(
            "200 when every backend can be reached, else 503 with each backend's health. "
            "Needs no API key."
        ),
        response_model=Readiness,
        responses=problem_responses(
            [503], {503: "Some backend cannot be reached"}, component="NotReadyProblem"
        ),
    )
    async def readyz(state: State) -> Response:
        timeout = state.settings.gateway.readiness_timeout
        names = list(state.backends)
        probes = await asyncio.gather(*(_probe(state.backends[n], timeout) for n in names))
        detail = {
            name: {"ready": ok, **health} for name, (ok, health) in zip(names, probes, strict=True)
        }
        down = [name for name, (ok, _) in zip(names, probes, strict=True) if not ok]
        if down:
            raise NotReady(
                "not ready: " + ", ".join(f"backend {name} cannot be reached" for name in down),
                extras={"backends": detail},
            )
        return Response(
            orjson.dumps({"status": "ready", "backends": detail}), media_type="application/json"
        )

    return api
