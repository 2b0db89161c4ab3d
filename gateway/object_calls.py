"""One request about a manager backend's objects, from decoded JSON to the JSON answer.

Shared by the REST routes of :mod:`gateway.routes.objects` and the object
calls of ``/ws`` (:mod:`gateway.websocket.calls`), as :mod:`gateway.calls`
is for payload calls. Shapes, checked by hand:

* create: ``{"typeid": str, "args"?: [...], "kwargs"?: {...}, "timeout"?}``;
* method call: ``{"args"?: [...], "kwargs"?: {...}, "timeout"?, "result_format"?}``,
  on ``/ws`` with ``"object"`` and ``"method"`` (and ``"backend"?``) too.

``args`` items and ``kwargs`` values are tagged JSON, decoded by the codec
as payloads are. ``timeout`` (and the request's ``Request-Timeout`` header)
can only shorten a call, as in :mod:`gateway.calls`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from connbridge.codec import ResultFormat, from_json, to_json
from connbridge.errors import BackendUnavailable, HandshakeError, PayloadError
from connbridge.manager import NestedProxy

from .calls import RESULT_FORMATS
from .deadlines import effective_timeout
from .objects import HeldObject
from .problems import InvalidPayload, InvalidRequest, pointer
from .state import Backend, GatewayState

__all__ = [
    "MethodCall",
    "ObjectCreate",
    "parse_create",
    "parse_method_call",
    "run_create",
    "run_method_call",
]

_CALL_FIELDS: Final = frozenset({"args", "kwargs", "timeout", "result_format"})
#: What a ``/ws`` message adds to a method call (its ``id`` is taken out before).
_MESSAGE_FIELDS: Final = frozenset({"backend", "object", "method"})
_CREATE_FIELDS: Final = frozenset({"typeid", "args", "kwargs", "timeout"})


@dataclass(slots=True)
class MethodCall:
    """A checked method call; ``args`` and ``kwargs`` are still JSON."""

    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    result_format: ResultFormat = "json"
    #: From a ``/ws`` message only.
    backend: str | None = None
    object: str = ""
    method: str = ""


@dataclass(slots=True)
class ObjectCreate:
    """A checked create request; ``args`` and ``kwargs`` are still JSON."""

    typeid: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None


def _common(
    body: dict[str, Any], fields: frozenset[str], at: Sequence[str | int]
) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for key in body:
        if key not in fields:
            errors.append({"detail": f"unknown field {key!r}", "pointer": pointer([*at, key])})
    if type(body.get("args", [])) is not list:
        errors.append({"detail": "must be an array", "pointer": pointer([*at, "args"])})
    if type(body.get("kwargs", {})) is not dict:
        errors.append({"detail": "must be an object", "pointer": pointer([*at, "kwargs"])})
    timeout = body.get("timeout")
    if timeout is not None and (
        type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
    ):
        errors.append(
            {"detail": "must be a number of seconds > 0", "pointer": pointer([*at, "timeout"])}
        )
    return errors


def _expect_object(body: object, what: str) -> dict[str, Any]:
    if type(body) is not dict:
        raise InvalidRequest(
            f"{what} must be a JSON object", [{"detail": "expected an object", "pointer": "#"}]
        )
    return body


def parse_method_call(body: object, *, message: bool = False) -> MethodCall:
    """Check a method call's body (``message``: a ``/ws`` message, naming its object).

    Raises:
        InvalidRequest: the body is not of the documented shape.
    """
    body = _expect_object(body, "a method call")
    errors = _common(body, _CALL_FIELDS | _MESSAGE_FIELDS if message else _CALL_FIELDS, ())
    result_format = body.get("result_format", "json")
    if result_format not in RESULT_FORMATS:
        errors.append({"detail": "must be 'json' or 'tagged'", "pointer": "#/result_format"})
    if message:
        for key in ("object", "method"):
            if type(body.get(key)) is not str:
                errors.append({"detail": f"'{key}' must be a string", "pointer": f"#/{key}"})
        if body.get("backend") is not None and type(body["backend"]) is not str:
            errors.append({"detail": "must be a string", "pointer": "#/backend"})
    if errors:
        raise InvalidRequest("the method call is not valid", errors)
    timeout = body.get("timeout")
    return MethodCall(
        body.get("args", []),
        body.get("kwargs", {}),
        None if timeout is None else float(timeout),
        result_format,
        body.get("backend"),
        body.get("object", ""),
        body.get("method", ""),
    )


def parse_create(body: object) -> ObjectCreate:
    """Check a create request's body.

    Raises:
        InvalidRequest: the body is not of the documented shape.
    """
    body = _expect_object(body, "a create request")
    errors = _common(body, _CREATE_FIELDS, ())
    if type(body.get("typeid")) is not str:
        errors.append({"detail": "'typeid' is required, a string", "pointer": "#/typeid"})
    if errors:
        raise InvalidRequest("the create request is not valid", errors)
    timeout = body.get("timeout")
    return ObjectCreate(
        body["typeid"],
        body.get("args", []),
        body.get("kwargs", {}),
        None if timeout is None else float(timeout),
    )


def _decode(
    state: GatewayState, args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        decoded_args = tuple(
            _decode_one(state, value, ("args", index)) for index, value in enumerate(args)
        )
        decoded_kwargs = {
            key: _decode_one(state, value, ("kwargs", key)) for key, value in kwargs.items()
        }
    except _Refused as refused:
        exc, where = refused.args
        raise InvalidPayload(str(exc), [{"detail": exc.args[0], "pointer": where}]) from None
    return decoded_args, decoded_kwargs


class _Refused(Exception):
    pass


def _decode_one(state: GatewayState, value: object, at: tuple[str | int, ...]) -> object:
    try:
        return from_json(value, max_depth=state.max_depth)
    except PayloadError as exc:
        raise _Refused(exc, pointer([*at, *exc.path])) from None


async def run_create(
    state: GatewayState,
    backend: Backend,
    request: ObjectCreate,
    *,
    request_timeout: float | None = None,
) -> HeldObject:
    """Create an object; raises as :meth:`ObjectTable.create` and ``InvalidPayload``.

    ``request_timeout`` is the ``Request-Timeout`` header (seconds), as for
    :func:`run_method_call`.
    """
    objects = backend.running_objects()
    args, kwargs = _decode(state, request.args, request.kwargs)
    timeout = effective_timeout(backend, request.timeout, request_timeout)
    try:
        return await objects.create(request.typeid, args, kwargs, timeout=timeout)
    except BackendUnavailable as exc:
        if exc.handshake_failed:
            raise HandshakeError(str(exc)) from exc
        raise


async def run_method_call(
    state: GatewayState,
    backend: Backend,
    ident: str,
    method: str,
    call: MethodCall,
    *,
    request_timeout: float | None = None,
) -> dict[str, Any]:
    """Call a method; the success body ``{"result", "backend", "elapsed_ms"}``.

    ``request_timeout`` is the request's ``Request-Timeout`` header (seconds;
    on ``/ws``, the upgrade's), which shortens the call as its ``timeout`` does.

    Raises:
        WrongBackendKind: the backend is not a manager.
        InvalidPayload: an argument the codec refuses.
        UnknownObject, UnknownMethod, BackendRaised, ManagerFailure,
        ConnbridgeError: see :meth:`ObjectTable.call`.
    """
    objects = backend.running_objects()
    held = objects.get(ident)  # an unknown object is told before its arguments
    args, kwargs = _decode(state, call.args, call.kwargs)
    timeout = effective_timeout(backend, call.timeout, request_timeout)
    started = time.perf_counter()
    try:
        answer = await objects.call(held.ident, method, args, kwargs, timeout=timeout)
    except BackendUnavailable as exc:
        if exc.handshake_failed:
            raise HandshakeError(str(exc)) from exc
        raise
    elapsed = time.perf_counter() - started
    result = (
        answer.held.reference()
        if answer.held is not None
        else to_json(
            answer.value,
            format=call.result_format,
            max_depth=state.result_max_depth,
            max_bytes=state.max_result_bytes,
            rendered={NestedProxy: answer.render} if answer.nested else None,
        )
    )
    return {"result": result, "backend": backend.name, "elapsed_ms": round(elapsed * 1000, 3)}
