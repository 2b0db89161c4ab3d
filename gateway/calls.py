"""One call to a backend, from a decoded JSON request to the JSON answer.

Shared by ``POST /compute``, ``POST /backends/{name}/compute``, each entry
of ``POST /compute/batch`` (and, later, the WebSocket routes):

1. :func:`parse_call` checks the request object's shape by hand (no
   pydantic on the hot path): ``{"backend"?: str, "payload": <JSON>,
   "timeout"?: number > 0, "result_format"?: "json" | "tagged"}``.
2. :func:`run_call` checks the payload against the backend's
   ``payload_schema``, turns it into Python with the codec, makes the call
   through the pool, and turns the reply into JSON.

``timeout`` can only shorten a call: the effective timeout is the smallest of
the request's, its ``Request-Timeout`` header's and the backend's configured
``call_timeout`` (:func:`gateway.deadlines.effective_timeout`), so a client
cannot hold a pooled connection longer than the operator allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

from connbridge.codec import ResultFormat, from_json, to_json
from connbridge.errors import BackendUnavailable, HandshakeError, PayloadError

from .deadlines import effective_timeout
from .problems import BackendRaised, InvalidPayload, InvalidRequest, pointer
from .state import Backend, GatewayState

__all__ = ["RESULT_FORMATS", "CallRequest", "decode_payload", "parse_call", "run_call"]

_FIELDS: Final = frozenset({"backend", "payload", "timeout", "result_format"})
#: The values of ``result_format`` (a call's field, a session's query parameter).
RESULT_FORMATS: Final[tuple[ResultFormat, ...]] = get_args(ResultFormat)
_MAX_SCHEMA_ERRORS: Final = 20
_MAX_MESSAGE: Final = 300


@dataclass(slots=True)
class CallRequest:
    """A checked call request; ``payload`` is still JSON (not yet decoded)."""

    payload: Any
    backend: str | None = None
    timeout: float | None = None
    result_format: ResultFormat = "json"


def parse_call(body: object, *, at: Sequence[str | int] = ()) -> CallRequest:
    """Check the shape of a call request object.

    ``at`` is where the object sits in the request body (for a batch entry,
    ``("requests", 3)``); error pointers start there.

    Raises:
        InvalidRequest: the object is not of the documented shape; its
            ``errors`` list every problem found, with JSON Pointers.
    """
    if type(body) is not dict:
        raise InvalidRequest(
            "a call request must be a JSON object",
            [{"detail": "expected an object with a 'payload'", "pointer": pointer(at)}],
        )
    if "payload" in body and len(body) == 1:  # the common case, checked fast
        return CallRequest(body["payload"])
    errors: list[dict[str, str]] = []
    if "payload" not in body:
        errors.append({"detail": "'payload' is required", "pointer": pointer([*at, "payload"])})
    for key in body:
        if key not in _FIELDS:
            errors.append({"detail": f"unknown field {key!r}", "pointer": pointer([*at, key])})
    backend = body.get("backend")
    if backend is not None and type(backend) is not str:
        errors.append({"detail": "must be a string", "pointer": pointer([*at, "backend"])})
    timeout = body.get("timeout")
    if timeout is not None and (
        type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
    ):
        errors.append(
            {"detail": "must be a number of seconds > 0", "pointer": pointer([*at, "timeout"])}
        )
    result_format = body.get("result_format", "json")
    if result_format not in RESULT_FORMATS:
        errors.append(
            {
                "detail": "must be 'json' or 'tagged'",
                "pointer": pointer([*at, "result_format"]),
            }
        )
    if errors:
        raise InvalidRequest("the call request is not valid", errors)
    return CallRequest(
        body["payload"],
        backend=backend,
        timeout=None if timeout is None else float(timeout),
        result_format=result_format,
    )


def _check_schema(backend: Backend, payload: object, at: Sequence[str | int]) -> None:
    validator = backend.validator
    if validator is None:
        return
    errors = []
    try:
        for error in validator.iter_errors(payload):  # type: ignore[arg-type]
            message = error.message
            if len(message) > _MAX_MESSAGE:
                message = message[: _MAX_MESSAGE - 3] + "..."
            errors.append(
                {
                    "detail": message,
                    "pointer": pointer([*at, *error.absolute_path]),
                    "schema_path": pointer(error.absolute_schema_path),
                }
            )
            if len(errors) >= _MAX_SCHEMA_ERRORS:
                break
    except RecursionError:
        # jsonschema validates recursively: a deep payload under a recursive
        # schema ("$ref": "#") runs out of stack before the codec's max_depth
        # could refuse it.
        raise InvalidPayload(
            f"the payload nests too deeply to be checked against the schema of "
            f"backend {backend.name!r}",
            [{"detail": "nested too deeply", "pointer": pointer(at)}],
        ) from None
    if errors:
        errors.sort(key=lambda e: e["pointer"])
        first = errors[0]
        raise InvalidPayload(
            f"the payload does not match the schema of backend {backend.name!r}: "
            f"{first['detail']} (at {first['pointer']})",
            errors,
        )


def decode_payload(
    state: GatewayState, backend: Backend, payload: object, *, at: Sequence[str | int] = ()
) -> object:
    """Check ``payload`` against the backend's ``payload_schema`` and turn it into Python.

    Used for each call and for each message of a WebSocket session. ``at``
    is where the payload sits in the message (``("payload",)`` in a call
    request); error pointers start there.

    Raises:
        InvalidPayload: the payload breaks the schema, or the codec cannot
            turn it into Python (unknown tag, too deep...).
    """
    _check_schema(backend, payload, at)
    try:
        return from_json(payload, max_depth=state.max_depth)
    except PayloadError as exc:
        where = pointer([*at, *exc.path])
        raise InvalidPayload(str(exc), [{"detail": exc.args[0], "pointer": where}]) from None


async def run_call(
    state: GatewayState,
    backend: Backend,
    call: CallRequest,
    *,
    at: Sequence[str | int] = (),
    request_timeout: float | None = None,
) -> dict[str, Any]:
    """Make the call and return the success body ``{"result", "backend", "elapsed_ms"}``.

    ``request_timeout`` is the request's ``Request-Timeout`` header (seconds),
    which shortens the call as its ``timeout`` does.

    Raises:
        WrongBackendKind: the backend is a manager (it takes no payloads).
        InvalidPayload: the payload breaks the backend's schema, or the
            codec cannot turn it into Python (unknown tag, too deep...).
        BackendRaised: the backend answered with an exception object.
        HandshakeError: every address of the backend failed the handshake (a
            wrong key, or a Listener that sends no challenge).
        ConnbridgeError: the pool's errors (timeout, unavailable, overloaded,
            closed, connection lost, refused pickle, ...) and ResultError.
    """
    backend.refuse_payloads()
    obj = decode_payload(state, backend, call.payload, at=(*at, "payload"))
    pool = backend.running_pool()
    timeout = effective_timeout(backend, call.timeout, request_timeout)
    started = time.perf_counter()
    try:
        result = await pool.call(obj, timeout=timeout)
    except BackendUnavailable as exc:
        if exc.handshake_failed:
            raise HandshakeError(str(exc)) from exc
        raise
    elapsed = time.perf_counter() - started
    if isinstance(result, BaseException):
        raise BackendRaised(
            result,
            result_format=call.result_format,
            max_depth=state.result_max_depth,
            max_bytes=state.max_result_bytes,
        )
    return {
        "result": to_json(
            result,
            format=call.result_format,
            max_depth=state.result_max_depth,
            max_bytes=state.max_result_bytes,
        ),
        "backend": backend.name,
        "elapsed_ms": round(elapsed * 1000, 3),
    }
