"""``POST /compute``, ``POST /backends/{name}/compute`` and ``POST /compute/batch``.

Each backend gets its own route ``POST /backends/<name>/compute`` so that the
OpenAPI document can show that backend's ``payload_schema`` on its own
operation; a catch-all ``/backends/{name}/compute`` (not in the document)
answers 403 or 404 for other names.

The bodies are read and written by hand (:mod:`gateway.body`, orjson); the
models of :mod:`gateway.schemas` only document them. For the same reason the
endpoints take the bare ``Request`` and call :func:`~gateway.deps.gateway_state`
and :func:`~gateway.deps.authenticate` themselves rather than declaring
dependencies (see :mod:`gateway.deps`); the OpenAPI security requirement is
added by :mod:`gateway.openapi`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from connbridge.errors import ConnbridgeError

from ..body import read_json
from ..calls import parse_call, run_call
from ..context import request_context, set_backend, set_route
from ..deadlines import header_timeout
from ..deps import authenticate, gateway_state
from ..openapi import compute_request_ref, problem_responses, request_body, with_request_timeout
from ..problems import InvalidRequest, pointer, problem_object
from ..schemas import BatchResponse, ComputeResponse
from ..state import Backend, GatewayState

__all__ = ["router"]

logger = logging.getLogger("connbridge.gateway")

_JSON: Final = "application/json"
#: Problem statuses of a compute operation (401 is added when keys are configured).
_CALL_ERRORS: Final = (400, 403, 404, 413, 415, 422, 502, 503, 504)
_CALL_DESCRIPTIONS: Final = {
    422: "The request or its payload is invalid (schema, unknown tag, nesting too deep)",
    502: "The backend answered with an exception, broke the protocol, closed the "
    "connection mid-call, or sent a reply that was refused or has no JSON form",
    503: "The backend is unreachable, refused our key, or is overloaded (see Retry-After), "
    "or the gateway is shutting down",
}
_BATCH_ERRORS: Final = (400, 413, 415, 422)
_BACKEND_ROUTE: Final = "/backends/{name}/compute"
#: On a backend declared ``replies = "many"``: later replies are not in this
#: response (they are discarded, and counted in ``/metrics``; read them with
#: ``/stream``).
EXTRA_REPLIES_HEADER: Final = "Connbridge-Extra-Replies"
_FIRST_REPLY_ONLY: Final = {EXTRA_REPLIES_HEADER: "discarded"}


async def _compute(request: Request, name: str | None) -> Response:
    state = gateway_state(request.app)
    caller = authenticate(request, state)  # before the body is read
    request_timeout = header_timeout(request.scope)
    gateway = state.settings.gateway
    body = await read_json(request, gateway.max_body_bytes, gateway.body_timeout)
    call = parse_call(body)
    if name is not None:
        if call.backend is not None and call.backend != name:
            raise InvalidRequest(
                f"the path names backend {name!r} but the body names {call.backend!r}",
                [{"detail": "must match the backend in the path", "pointer": "#/backend"}],
            )
        call.backend = name
    # A name from the path has no place in the body for an error to point at.
    backend = state.backend_for(caller, call.backend, at=None if name is not None else ())
    set_backend(request.scope, backend.name)
    answer = await run_call(state, backend, call, request_timeout=request_timeout)
    if backend.settings.pool.replies == "many":
        # Such a backend may answer again: say that only the first reply is here.
        return Response(orjson.dumps(answer), media_type=_JSON, headers=_FIRST_REPLY_ONLY)
    return Response(orjson.dumps(answer), media_type=_JSON)


def _backend_endpoint(name: str) -> Callable[..., Coroutine[Any, Any, Response]]:
    async def compute_on_backend(request: Request) -> Response:
        set_route(request.scope, _BACKEND_ROUTE)
        return await _compute(request, name)

    return compute_on_backend


def _add_backend_route(
    api: APIRouter, name: str, backend: Backend, example: dict[str, Any]
) -> None:
    """``POST /backends/<name>/compute``, documented with the backend's ``payload_schema``."""
    schema = backend.settings.payload_schema
    has_schema = schema is not None
    examples = schema.get("examples") if schema is not None else None
    backend_example = {"payload": examples[0]} if isinstance(examples, list) and examples else None
    api.add_api_route(
        f"/backends/{name}/compute",
        _backend_endpoint(name),
        methods=["POST"],
        operation_id=f"compute_on_{name}",
        summary=f"Call backend {name}",
        description=(
            f"Like `POST /compute` with `backend` = `{name}`."
            + (" The payload must match this backend's schema." if has_schema else "")
        ),
        response_model=ComputeResponse,
        responses=problem_responses(_CALL_ERRORS, _CALL_DESCRIPTIONS),
        openapi_extra=with_request_timeout(
            request_body(
                compute_request_ref(name if has_schema else None),
                backend_example if has_schema else example,
            )
        ),
    )


async def _compute_batch(request: Request) -> Response:
    state = gateway_state(request.app)
    caller = authenticate(request, state)
    request_timeout = header_timeout(request.scope)  # it bounds every entry
    settings = state.settings.gateway
    body = await read_json(request, settings.max_body_bytes, settings.body_timeout)
    requests = _batch_requests(body, settings.batch_max_requests)
    context = request_context(request.scope)
    request_id = context.request_id if context is not None else None
    path = request.scope["path"]
    limit = asyncio.Semaphore(settings.batch_concurrency)

    async def one(index: int, item: object) -> dict[str, Any]:
        at = ("requests", index)
        backend_name = None
        try:
            call = parse_call(item, at=at)
            backend = state.backend_for(caller, call.backend, at=at)
            backend_name = backend.name
            async with limit:
                return await run_call(state, backend, call, at=at, request_timeout=request_timeout)
        except Exception as exc:
            if not isinstance(exc, ConnbridgeError):
                logger.error("batch entry %d failed", index, exc_info=exc)
            _, error, _ = problem_object(
                exc,
                instance=path,
                request_id=request_id,
                backend=backend_name,
                entry=pointer(at),
            )
            return {"error": error}

    results = await asyncio.gather(*(one(i, item) for i, item in enumerate(requests)))
    return Response(orjson.dumps({"results": results}), media_type=_JSON)


def router(state: GatewayState) -> APIRouter:
    """The compute routes for the backends of ``state``."""
    api = APIRouter(tags=["compute"])
    example = {"payload": [5, 6]}

    @api.post(
        "/compute",
        operation_id="compute",
        summary="Call a backend",
        description=(
            "Pickle `payload`, send it to the backend (the default one unless `backend` "
            "names another), and answer with its reply as JSON."
        ),
        response_model=ComputeResponse,
        responses=problem_responses(_CALL_ERRORS, _CALL_DESCRIPTIONS),
        openapi_extra=with_request_timeout(request_body(compute_request_ref(), example)),
    )
    async def compute(request: Request) -> Response:
        return await _compute(request, None)

    for name, backend in state.backends.items():
        if not backend.is_manager:  # a manager takes no payloads (see routes.objects)
            _add_backend_route(api, name, backend, example)

    @api.post(_BACKEND_ROUTE, include_in_schema=False)
    async def compute_on_unknown(request: Request, name: str) -> Response:
        # Only names with no route of their own get here: 403 or 404.
        return await _compute(request, name)

    @api.post(
        "/compute/batch",
        operation_id="compute_batch",
        summary="Make several calls",
        description=(
            "Run each request as `POST /compute` would, concurrently within a bound, and "
            "answer with one entry per request, in order: a result or an `error` problem."
        ),
        response_model=BatchResponse,
        responses=problem_responses(_BATCH_ERRORS),
        openapi_extra=with_request_timeout(
            request_body("BatchRequest", {"requests": [{"payload": [1, 2]}, {"payload": [3, 4]}]}),
            "Caps the `timeout` of every entry.",
        ),
    )
    async def compute_batch(request: Request) -> Response:
        return await _compute_batch(request)

    return api


def _batch_requests(body: object, most: int) -> list[object]:
    if type(body) is not dict or "requests" not in body:
        raise InvalidRequest(
            'a batch must be an object {"requests": [...]}',
            [{"detail": "expected an object with a 'requests' array", "pointer": "#"}],
        )
    extra = [key for key in body if key != "requests"]
    if extra:
        raise InvalidRequest(
            "a batch has only 'requests'",
            [{"detail": f"unknown field {key!r}", "pointer": pointer([key])} for key in extra],
        )
    requests = body["requests"]
    if type(requests) is not list:
        raise InvalidRequest(
            "'requests' must be an array", [{"detail": "must be an array", "pointer": "#/requests"}]
        )
    if len(requests) > most:
        raise InvalidRequest(
            f"a batch holds at most {most} requests, not {len(requests)}",
            [{"detail": f"at most {most} items", "pointer": "#/requests"}],
        )
    return requests
