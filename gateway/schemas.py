"""Pydantic models of the API's bodies, for the OpenAPI document only.

The routes parse and write their JSON by hand (see :mod:`gateway.body` and
:mod:`gateway.calls`): these models describe the same shapes so the docs and
client generators know them, and are never used to validate a request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "STREAM_ITEMS",
    "AddressState",
    "BackendHealth",
    "BackendInfo",
    "BackendList",
    "BackendReadiness",
    "BatchError",
    "BatchRequest",
    "BatchResponse",
    "ComputeRequest",
    "ComputeResponse",
    "ExceptionInfo",
    "Health",
    "MethodCall",
    "NotReadyProblem",
    "ObjectCreate",
    "ObjectDescription",
    "PoolStatistics",
    "Problem",
    "ProblemItem",
    "Readiness",
    "StreamEnd",
    "StreamEndReason",
    "StreamError",
    "StreamRequest",
    "StreamResult",
]


class ComputeRequest(BaseModel):
    """One call: the payload is pickled and sent to the backend, the reply comes back."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"payload": [5, 6]}, {"payload": ["mark", "帅哥"]}]},
    )

    backend: str | None = Field(None, description="Backend name; the default backend when omitted.")
    payload: Any = Field(
        description=(
            "Any JSON value. Objects whose only key is a `$` tag stand for Python types: "
            '`{"$tuple": [1, 2]}`, `{"$bytes": "<base64>"}`, `{"$set": [...]}`, '
            '`{"$int": "<digits>"}`, `{"$datetime": "<ISO 8601>"}`, ...'
        )
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds; can only shorten the backend's configured timeout.",
    )
    result_format: Literal["json", "tagged"] = Field(
        "json",
        description=(
            "`json`: natural JSON (tuples as arrays, dates as ISO strings). "
            "`tagged`: lossless, with `$` tags, the inverse of the payload encoding."
        ),
    )


class StreamRequest(ComputeRequest):
    """A call whose every reply is streamed; ``replies`` and ``idle_timeout`` end it sooner."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"payload": {"op": "stream", "count": 3, "value": "hi"}, "replies": 3}]
        },
    )

    replies: int | None = Field(
        None,
        ge=1,
        description=(
            "End the stream after this many replies (at most the backend's `max_replies`; "
            "required when its `stream_end` is `count`). The connection is then reused."
        ),
    )
    idle_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds of silence after a reply that end the stream (can only "
        "shorten the backend's `stream_idle_timeout`).",
    )


class ComputeResponse(BaseModel):
    """The backend's reply."""

    result: Any = Field(description="The reply, converted to JSON as `result_format` asks.")
    backend: str = Field(description="The backend that answered.")
    elapsed_ms: float = Field(description="Time spent waiting for the backend, in milliseconds.")


class ObjectCreate(BaseModel):
    """Create a shared object on a manager backend."""

    model_config = ConfigDict(extra="forbid")

    typeid: str = Field(description="A typeid the manager registers and the backend allows.")
    args: list[Any] = Field([], description="Arguments of its callable, as tagged JSON.")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments, values as tagged JSON.")
    timeout: float | None = Field(None, gt=0, description="Seconds; can only shorten.")


class MethodCall(BaseModel):
    """Call a method of a shared object; the body may be left out when it has no arguments."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field([], description="Arguments, as tagged JSON.")
    kwargs: dict[str, Any] = Field({}, description="Keyword arguments, values as tagged JSON.")
    timeout: float | None = Field(None, gt=0, description="Seconds; can only shorten.")
    result_format: Literal["json", "tagged"] = "json"


class ObjectDescription(BaseModel):
    """A shared object the gateway holds on a manager backend."""

    id: str = Field(description="The manager's id of the object.")
    typeid: str
    methods: list[str] = Field(description="The methods clients may call.")
    backend: str


class ProblemItem(BaseModel):
    """One error in a request, located by a JSON Pointer into the body, or by a parameter."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    detail: str
    pointer: str | None = Field(None, description="JSON Pointer fragment, e.g. `#/payload/0`.")
    parameter: str | None = Field(
        None, description="The header or query parameter in error, e.g. `Request-Timeout`."
    )
    location: str | None = Field(
        None, alias="in", description="Where `parameter` is: `header` or `query`."
    )


class ExceptionInfo(BaseModel):
    """An exception object the backend answered with."""

    type: str = Field(description="Class name (`ValueError`, or `module.Class`).")
    args: list[Any] | None = Field(description="Its arguments as JSON; null when they have none.")


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable URI of the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="Path of the request.")
    request_id: str | None = Field(None, description="Also in the `X-Request-ID` header.")
    backend: str | None = None
    errors: list[ProblemItem] | None = None
    exception: ExceptionInfo | None = None


class BatchRequest(BaseModel):
    """Several calls at once; they run concurrently and answer in order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"requests": [{"payload": [1, 2]}, {"payload": [3, 4]}]}]},
    )

    requests: list[ComputeRequest]


class BatchError(BaseModel):
    """A call of a batch that failed."""

    error: Problem


class BatchResponse(BaseModel):
    """One entry per request, in request order: a result or an error."""

    results: list[ComputeResponse | BatchError]


class StreamResult(BaseModel):
    """One reply of a stream (SSE: an event with an `id` counting from 0)."""

    result: Any = Field(description="The reply, converted to JSON as `result_format` asks.")


class StreamEndReason(BaseModel):
    """Why a complete stream ended."""

    reason: Literal["sentinel", "count", "closed", "idle"] = Field(
        description=(
            "`sentinel`: the backend sent its end value (not written); `count`: the "
            "`replies` asked for came; `closed`: the backend closed its connection; "
            "`idle`: no reply for the idle timeout."
        )
    )


class StreamEnd(BaseModel):
    """The last item of a complete stream (SSE: `event: end`)."""

    end: StreamEndReason


class StreamError(BaseModel):
    """The last item of a stream that broke after its first reply (SSE: `event: error`)."""

    error: Problem


#: One line of NDJSON, or the ``data`` of one SSE event: results, then an end or an error.
STREAM_ITEMS = (StreamResult, StreamEnd, StreamError)


class AddressState(BaseModel):
    """One address of a backend as its pool sees it (``health`` and ``stats`` list them)."""

    address: str
    state: Literal["unknown", "up", "down"] = Field(
        description="`unknown`: nothing connected yet; `up`: the last connection worked; "
        "`down`: left out of rotation until its backoff ends (`retry_in_s`)."
    )
    open: int = Field(description="Connections established.")
    idle: int
    in_use: int
    draining: int
    opening: int
    stalled_handshakes: int
    capacity: int | None = Field(
        description="How many connections the server takes at once, once learned; "
        "null while unknown."
    )
    reuse: Literal["unproven", "proven", "never"] = Field(
        description="Whether a connection may carry another call: `never` for servers that "
        "close after a reply."
    )
    calls: int
    errors: dict[str, int] = Field(description="Failures by kind.")
    consecutive_failures: int
    resolved_from: str | None = Field(
        None, description="The name this address was resolved from; absent when none."
    )
    last_error: str | None = Field(None, description="Absent until a connection failed.")
    error_kind: str | None = Field(None, description="The kind of `last_error`.")
    retry_in_s: float | None = Field(None, description="Only while `down`.")
    stale: bool | None = Field(
        None, description="True when its name no longer resolves to it; absent otherwise."
    )


class BackendHealth(BaseModel):
    """A backend's health, from its pool's state (no connection is made for it)."""

    status: Literal["up", "down", "unknown"] = Field(
        description="`up` when any address is, `down` when every address is out of "
        "rotation, `unknown` before the first connection."
    )
    addresses: list[AddressState] | None = Field(
        None, description="Absent only before the gateway has started."
    )
    error: str | None = Field(None, description="Why the address cannot be resolved, if so.")


class BackendReadiness(BackendHealth):
    """A backend's health, and whether ``/readyz`` could reach it."""

    ready: bool


class PoolStatistics(BaseModel):
    """Counters and gauges of a backend's connection pool."""

    name: str
    open: int
    idle: int
    in_use: int
    draining: int
    opening: int
    stalled_handshakes: int
    waiters: int = Field(description="Calls waiting for a connection now.")
    opened: int = Field(description="Connections opened since start.")
    calls: int
    errors: dict[str, int] = Field(description="Failed calls by kind.")
    violations: int = Field(description="Protocol violations seen.")
    discarded_replies: int
    waits: int = Field(description="Calls that had to wait for a connection.")
    wait_time_total_s: float
    wait_time_max_s: float
    closed: dict[str, int] = Field(description="Connections closed, by reason.")
    dedicated_opened: int
    max_connections_per_address: int
    addresses: list[AddressState]


class BackendInfo(BaseModel):
    """A backend as ``GET /backends`` shows it; never a key."""

    name: str
    kind: Literal["listener", "manager"] = Field(
        description="`manager`: a `multiprocessing.managers` server; it also lists `typeids`, "
        "`methods`, `object_ttl` and the number of `objects` the gateway holds on it."
    )
    default: bool
    addresses: list[str]
    timeout: float
    max_connections: int
    pickle_protocol: int
    payload_schema: dict[str, Any] | None
    health: BackendHealth
    stats: PoolStatistics
    typeids: list[str] | None = Field(None, description="Manager backends only.")
    methods: dict[str, list[str]] | None = Field(
        None, description="Manager backends only: the methods callable on each typeid."
    )
    object_ttl: float | None = Field(None, description="Manager backends only.")
    objects: int | None = Field(None, description="Manager backends only: shared objects held now.")


class BackendList(BaseModel):
    """The backends the caller's key may use."""

    backends: list[BackendInfo]


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Every backend can be reached."""

    status: Literal["ready"]
    backends: dict[str, BackendReadiness]


class NotReadyProblem(Problem):
    """A ``not-ready`` problem: some backend cannot be reached; each one's readiness."""

    backends: dict[str, BackendReadiness]
