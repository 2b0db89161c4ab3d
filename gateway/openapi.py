"""The app's OpenAPI document: FastAPI's, plus what the hand-parsed routes cannot declare.

The compute routes read their bodies themselves (see :mod:`gateway.body`),
so FastAPI does not know their request bodies. They declare them through
``openapi_extra`` as references to components that :func:`build_openapi`
adds from :mod:`gateway.schemas`; each backend's ``payload_schema`` becomes
a component ``Payload.<name>`` used by its own operation
``POST /backends/<name>/compute``. A manager backend's create body is a
component ``ObjectCreate.<name>`` whose ``typeid`` lists its ``typeids``.

What the document promises is what the gateway does, so that generated
clients are right:

- A property a request may leave out is optional and has no ``default``
  (:func:`optional_without_default`): openapi-typescript, with its
  defaults, makes every property with a ``default`` required. A default
  other than null is said in the description instead.
- 401 and 403 are documented only where they can happen. With no API keys
  configured, nothing answers either, so neither is in the document (nor is
  the ``access_token`` parameter). With keys, a bearer security scheme is
  declared and required, with its 401, on every operation that needs a key;
  the 403 that the call routes declare (a backend outside the key's scope)
  stays only when some key is scoped to a list of backends.
- Every operation that calls a backend declares the ``Request-Timeout``
  header (:func:`with_request_timeout`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from .deadlines import REQUEST_TIMEOUT
from .problems import MEDIA_TYPE, PROBLEM_TYPES
from .schemas import (
    STREAM_ITEMS,
    BatchRequest,
    ComputeRequest,
    MethodCall,
    NotReadyProblem,
    ObjectCreate,
    Problem,
    StreamRequest,
)
from .state import Backend, GatewayState

__all__ = [
    "PUBLIC_PATHS",
    "build_openapi",
    "compute_request_ref",
    "optional_without_default",
    "problem_responses",
    "request_body",
    "stream_responses",
    "with_request_timeout",
]

_REF: Final = "#/components/schemas/"
#: Operations that never need an API key.
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz"})
#: Where the document holds schemas that are the user's, shown as configured.
_PAYLOAD_PREFIX: Final = "Payload."
#: The query parameter that carries an API key for clients that cannot set headers.
_KEY_PARAMETER: Final = "access_token"


def compute_request_ref(backend: str | None = None) -> str:
    """Component name of a compute request body (per backend when it has a schema)."""
    return f"ComputeRequest.{backend}" if backend is not None else "ComputeRequest"


def request_body(component: str, example: Any = None) -> dict[str, Any]:
    """An ``openapi_extra`` fragment declaring a required JSON body of ``component``."""
    media: dict[str, Any] = {"schema": {"$ref": _REF + component}}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def with_request_timeout(extra: dict[str, Any], note: str = "") -> dict[str, Any]:
    """``extra`` (an ``openapi_extra``) with the ``Request-Timeout`` header parameter added.

    ``note`` ends the parameter's description: what the header bounds there.
    """
    description = (
        "Seconds this request may take, a number > 0 such as `2.5` (as the body's "
        "`timeout`): it can only shorten the backend's `call_timeout`, and with a `timeout` "
        "in the body the smaller one holds. Past it: 504 `backend-timeout`, or 503 "
        "`pool-exhausted` when it ran out before a backend connection was free (the request "
        "was not sent). A value that is "
        "not a number of seconds > 0, or the header given twice: 422 "
        "`invalid-request-timeout`."
    )
    parameter = {
        "name": REQUEST_TIMEOUT,
        "in": "header",
        "required": False,
        "description": f"{description} {note}".rstrip(),
        "schema": {"type": "number", "exclusiveMinimum": 0},
        "example": 2.5,
    }
    return {**extra, "parameters": [*extra.get("parameters", ()), parameter]}


def _titles(status: int) -> str:
    titles = sorted({row.title for row in PROBLEM_TYPES.values() if row.status == status})
    return "; ".join(titles) or "Error"


def problem_responses(
    statuses: Iterable[int],
    descriptions: Mapping[int, str] | None = None,
    *,
    component: str = "Problem",
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the problem statuses an operation can answer with.

    A status is described by the titles of its table rows unless
    ``descriptions`` says otherwise; its body is the schema ``component``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {
            "description": (descriptions or {}).get(status) or _titles(status),
            "content": {MEDIA_TYPE: {"schema": {"$ref": _REF + component}}},
        }
    return out


def optional_without_default(schema: dict[str, Any]) -> None:
    """Take ``default`` out of the optional properties of an object ``schema`` (in place).

    A generator may take a ``default`` to mean "always there": openapi-typescript
    7 does, with its defaults, and then requires ``backend``, ``timeout`` and
    ``result_format`` in every request body. A null default says nothing a
    missing property does not; another default is kept in words, at the end of
    the description, so the docs still show it.
    """
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or not isinstance(prop, dict) or "default" not in prop:
            continue
        default = prop.pop("default")
        if default is not None:
            shown = default if isinstance(default, str) else json.dumps(default)
            said = f"Default: `{shown}`."
            prop["description"] = f"{prop['description']} {said}" if "description" in prop else said


_SSE_EXAMPLE: Final = (
    'id: 0\ndata: {"result": {"seq": 0, "value": "hi"}}\n\n'
    ": heartbeat\n\n"
    'id: 1\ndata: {"result": {"seq": 1, "value": "hi"}}\n\n'
    'event: end\ndata: {"end": {"reason": "count"}}\n\n'
)


def stream_responses() -> dict[int | str, dict[str, Any]]:
    """The 200 response of a stream operation: NDJSON lines or SSE events of ``StreamItem``."""
    item = {"$ref": _REF + "StreamItem"}
    return {
        200: {
            "description": (
                "The replies as they come, then one last item: "
                '`{"end": {"reason"}}` (complete) or `{"error": <problem>}` (broken). '
                "NDJSON: one `StreamItem` per line. SSE: one event per reply, `data` a "
                "`StreamItem`, `id` counting from 0; the last item is `event: end` or "
                "`event: error`; comment lines are heartbeats."
            ),
            "content": {
                "application/x-ndjson": {
                    "schema": item,
                    "example": {"result": {"seq": 0, "value": "hi"}},
                },
                "text/event-stream": {
                    "schema": {"type": "string", "description": "SSE events; data: StreamItem"},
                    "example": _SSE_EXAMPLE,
                },
            },
        }
    }


def _problem_components() -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (ComputeRequest, "validation"),
            (BatchRequest, "validation"),
            (StreamRequest, "validation"),
            (ObjectCreate, "validation"),
            (MethodCall, "validation"),
            (Problem, "serialization"),
            (NotReadyProblem, "serialization"),
            *((item, "serialization") for item in STREAM_ITEMS),
        ],
        ref_template=_REF + "{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["StreamItem"] = {
        "title": "StreamItem",
        "description": "One line of NDJSON, or the `data` of one SSE event: "
        "a result per reply, then one end or error.",
        "anyOf": [{"$ref": _REF + item.__name__} for item in STREAM_ITEMS],
    }
    return schemas


def _backend_request(base: dict[str, Any], name: str) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["title"] = f"ComputeRequest for {name}"
    body.pop("examples", None)  # they need not match this backend's schema
    properties = body.setdefault("properties", {})
    properties.pop("backend", None)
    properties["payload"] = {"$ref": f"{_REF}Payload.{name}"}
    return body


def _create_request(base: dict[str, Any], backend: Backend) -> dict[str, Any]:
    """A manager backend's create body: ``typeid`` limited to its ``typeids``."""
    body = copy.deepcopy(base)
    body["title"] = f"ObjectCreate for {backend.name}"
    typeids = backend.settings.typeids or ()
    if "*" not in typeids:
        body.setdefault("properties", {})["typeid"] = {"type": "string", "enum": list(typeids)}
    return body


def _document_keys(document: dict[str, Any], state: GatewayState) -> None:
    """Security, 401 and 403 where API keys make them happen; nowhere without keys."""
    keys = state.keys
    public = set(PUBLIC_PATHS)
    if state.settings.gateway.metrics_public:
        public.add("/metrics")
    if keys.enabled:
        document.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `Authorization: Bearer <key>`.",
            }
        }
    for path, item in document.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if not keys.scoped:
                # Only a key limited to some backends can be refused one.
                responses.pop("403", None)
                responses.pop(403, None)
            if not keys.enabled:
                parameters = [
                    p for p in operation.get("parameters", ()) if p.get("name") != _KEY_PARAMETER
                ]
                if parameters:
                    operation["parameters"] = parameters
                else:
                    operation.pop("parameters", None)
            elif path not in public:
                operation["security"] = [{"apiKey": []}]
                responses.update(problem_responses([401]))


def build_openapi(app: FastAPI, state: GatewayState) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (computed once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        servers=app.servers,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for key, value in _problem_components().items():
        schemas.setdefault(key, value)
    base = schemas["ComputeRequest"]
    for name, backend in state.backends.items():
        if backend.is_manager:
            schemas[f"ObjectCreate.{name}"] = _create_request(schemas["ObjectCreate"], backend)
            continue
        payload_schema = backend.settings.payload_schema
        if payload_schema is None:
            continue
        schemas[f"Payload.{name}"] = copy.deepcopy(payload_schema)
        schemas[compute_request_ref(name)] = _backend_request(base, name)
    for name, schema in schemas.items():
        if not name.startswith(_PAYLOAD_PREFIX):
            optional_without_default(schema)
    _document_keys(document, state)
    app.openapi_schema = document
    return document
