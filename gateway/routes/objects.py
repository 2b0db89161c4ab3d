"""The shared objects of manager backends as REST resources.

==========================================================  ======================================
``POST /backends/{name}/objects``                           create (201 ``{"id", "typeid",
                                                            "methods", "backend"}``)
``GET /backends/{name}/objects/{id}``                       describe (200, the same object)
``DELETE /backends/{name}/objects/{id}``                    release one reference (204)
``POST /backends/{name}/objects/{id}/{method}``             call (200 ``{"result", "backend",
                                                            "elapsed_ms"}``)
==========================================================  ======================================

Each manager backend gets these routes under its own name, so that the
OpenAPI document shows its typeids and methods; catch-all routes (not in the
document) answer for other names: 403 or 404 as for compute, and 422
``wrong-backend-kind`` for a Listener backend. A typeid outside ``typeids``
is 422 ``typeid-not-allowed`` (a value of the body the backend does not
take, like a payload its schema refuses). Bodies are read by hand, as the
compute routes do (see :mod:`gateway.routes.compute`).
"""

from __future__ import annotations

from typing import Final

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ..body import read_json
from ..context import set_backend, set_route
from ..deadlines import effective_timeout, header_timeout
from ..deps import authenticate, gateway_state
from ..object_calls import parse_create, parse_method_call, run_create, run_method_call
from ..openapi import problem_responses, request_body, with_request_timeout
from ..schemas import ComputeResponse, ObjectDescription
from ..state import Backend, GatewayState

__all__ = ["router"]

_JSON: Final = "application/json"
_OBJECTS: Final = "/backends/{name}/objects"
_OBJECT: Final = "/backends/{name}/objects/{ident}"
_METHOD: Final = "/backends/{name}/objects/{ident}/{method}"
_CREATE_ERRORS: Final = (400, 403, 404, 413, 415, 422, 502, 503, 504)
_CALL_ERRORS: Final = (400, 403, 404, 413, 415, 422, 502, 503, 504)
_OBJECT_ERRORS: Final = (403, 404, 422, 502, 503, 504)
_DESCRIPTIONS: Final = {
    404: "Unknown backend, object (never created, released or expired) or method",
    422: "The request is invalid, the typeid is not allowed, or the backend is not a manager",
    502: "The method raised (backend-exception), the manager failed (manager-failure: its "
    "traceback is only logged), or its reply was refused or has no JSON form",
}


def _backend(request: Request, name: str, route: str) -> tuple[GatewayState, Backend]:
    set_route(request.scope, route)
    state = gateway_state(request.app)
    caller = authenticate(request, state)  # before the body is read
    backend = state.backend_for(caller, name, at=None)
    set_backend(request.scope, backend.name)
    backend.running_objects()  # a Listener backend: wrong-backend-kind
    return state, backend


async def _body(request: Request, state: GatewayState) -> object:
    headers = request.headers
    if "content-type" not in headers and headers.get("content-length", "0") == "0":
        return {}  # a call with no arguments may come without a body
    gateway = state.settings.gateway
    return await read_json(request, gateway.max_body_bytes, gateway.body_timeout)


async def _create(request: Request, name: str) -> Response:
    state, backend = _backend(request, name, _OBJECTS)
    request_timeout = header_timeout(request.scope)
    create = parse_create(await _body(request, state))
    held = await run_create(state, backend, create, request_timeout=request_timeout)
    return Response(orjson.dumps(held.describe(backend.name)), status_code=201, media_type=_JSON)


async def _describe(request: Request, name: str, ident: str) -> Response:
    _, backend = _backend(request, name, _OBJECT)
    held = backend.running_objects().get(ident)
    return Response(orjson.dumps(held.describe(backend.name)), media_type=_JSON)


async def _release(request: Request, name: str, ident: str) -> Response:
    _, backend = _backend(request, name, _OBJECT)
    timeout = effective_timeout(backend, header_timeout(request.scope))
    await backend.running_objects().release(ident, timeout=timeout)
    return Response(status_code=204)


async def _call(request: Request, name: str, ident: str, method: str) -> Response:
    state, backend = _backend(request, name, _METHOD)
    request_timeout = header_timeout(request.scope)
    call = parse_method_call(await _body(request, state))
    answer = await run_method_call(
        state, backend, ident, method, call, request_timeout=request_timeout
    )
    return Response(orjson.dumps(answer), media_type=_JSON)


def _methods_text(backend: Backend) -> str:
    settings = backend.settings
    typeids = settings.typeids or ()
    lines = [
        "Typeids clients may create: "
        + ("any the manager registers." if "*" in typeids else ", ".join(f"`{t}`" for t in typeids))
    ]
    for typeid, methods in settings.methods.items():
        lines.append(f"Methods of `{typeid}`: " + ", ".join(f"`{m}`" for m in methods) + ".")
    return "\n\n".join(lines)


def _add_manager_routes(api: APIRouter, name: str, backend: Backend) -> None:
    """The object routes of one manager backend, documented with its typeids and methods."""
    typeids = backend.settings.typeids or ()
    example_typeid = typeids[0] if typeids and typeids[0] != "*" else "get_queue"
    about = _methods_text(backend)

    async def create(request: Request) -> Response:
        return await _create(request, name)

    async def describe(request: Request, ident: str) -> Response:
        return await _describe(request, name, ident)

    async def release(request: Request, ident: str) -> Response:
        return await _release(request, name, ident)

    async def call(request: Request, ident: str, method: str) -> Response:
        return await _call(request, name, ident, method)

    base = f"/backends/{name}/objects"
    api.add_api_route(
        base,
        create,
        methods=["POST"],
        status_code=201,
        operation_id=f"create_object_on_{name}",
        summary=f"Create a shared object on manager {name}",
        description="Create an object of `typeid` on the manager; the gateway holds one "
        "reference to it until `DELETE`, `object_ttl` unused, or shutdown.\n\n" + about,
        response_model=ObjectDescription,
        responses=problem_responses(_CREATE_ERRORS, _DESCRIPTIONS),
        openapi_extra=with_request_timeout(
            request_body(
                f"ObjectCreate.{name}", {"typeid": example_typeid, "args": [], "kwargs": {}}
            )
        ),
    )
    api.add_api_route(
        base + "/{ident}",
        describe,
        methods=["GET"],
        operation_id=f"describe_object_on_{name}",
        summary=f"Describe an object of manager {name}",
        response_model=ObjectDescription,
        responses=problem_responses(_OBJECT_ERRORS, _DESCRIPTIONS),
    )
    api.add_api_route(
        base + "/{ident}",
        release,
        methods=["DELETE"],
        status_code=204,
        operation_id=f"release_object_on_{name}",
        summary=f"Release an object of manager {name}",
        description="Give back the reference one create took; the object is forgotten "
        "when the gateway holds no more.",
        responses={204: {"description": "Released"}, **problem_responses(_OBJECT_ERRORS)},
        openapi_extra=with_request_timeout({}),
    )
    api.add_api_route(
        base + "/{ident}/{method}",
        call,
        methods=["POST"],
        operation_id=f"call_object_method_on_{name}",
        summary=f"Call a method of an object of manager {name}",
        description="`args` items and `kwargs` values are tagged JSON, as payloads. A method "
        'that returns a shared object answers `{"result": {"$object": {"id", "typeid", '
        '"methods"}}}`, and that object is addressable too.\n\n' + about,
        response_model=ComputeResponse,
        responses=problem_responses(_CALL_ERRORS, _DESCRIPTIONS),
        openapi_extra=with_request_timeout(
            {
                "requestBody": {
                    "required": False,
                    "content": {
                        _JSON: {
                            "schema": {"$ref": "#/components/schemas/MethodCall"},
                            "example": {"args": [1], "kwargs": {}},
                        }
                    },
                }
            }
        ),
    )


def router(state: GatewayState) -> APIRouter:
    """The object routes of the manager backends of ``state``, and the catch-alls."""
    api = APIRouter(tags=["objects"])
    for name, backend in state.backends.items():
        if backend.is_manager:
            _add_manager_routes(api, name, backend)

    # Only names with no routes of their own get here: 403, 404 or wrong-backend-kind.
    @api.post(_OBJECTS, include_in_schema=False)
    async def create_on_other(request: Request, name: str) -> Response:
        return await _create(request, name)

    @api.get(_OBJECT, include_in_schema=False)
    async def describe_on_other(request: Request, name: str, ident: str) -> Response:
        return await _describe(request, name, ident)

    @api.delete(_OBJECT, include_in_schema=False)
    async def release_on_other(request: Request, name: str, ident: str) -> Response:
        return await _release(request, name, ident)

    @api.post(_METHOD, include_in_schema=False)
    async def call_on_other(request: Request, name: str, ident: str, method: str) -> Response:
        return await _call(request, name, ident, method)

    return api
