"""A stream request, and the two ways its items are written: NDJSON and Server-Sent Events.

A stream request is a call request (:func:`gateway.calls.parse_call`) with
two more fields, both of which can only shorten the backend's limits:

* ``replies``: the stream ends, provably, after this many replies (at most
  the backend's ``max_replies``);
* ``idle_timeout``: seconds of silence after a reply that end the stream
  (at most the backend's ``stream_idle_timeout``).

:func:`parse_stream` checks a JSON body; :func:`query_stream` turns the query
string of ``GET /backends/{name}/stream`` (for ``EventSource``, which cannot
POST) into the same object first. Errors in a query point at the parameter
(``{"detail", "parameter", "in": "query"}``) rather than into a body.

Every item of a stream is one JSON object: ``{"result": ...}`` per reply,
then exactly one last item, ``{"end": {"reason": ...}}`` when the stream is
complete or ``{"error": <problem>}`` when it broke. :class:`Framing` writes
them as NDJSON (one object per line) or as SSE (``id:`` counting replies
from 0, ``event: end`` and ``event: error`` for the last item, and comment
lines as heartbeats). :func:`pick_framing` reads ``Accept``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from .calls import CallRequest, parse_call
from .problems import InvalidRequest, MalformedJSON, NotAcceptable

__all__ = [
    "NDJSON",
    "NDJSON_FRAMING",
    "SSE",
    "SSE_FRAMING",
    "STREAM_FIELDS",
    "Framing",
    "StreamRequest",
    "parse_stream",
    "pick_framing",
    "query_stream",
]

NDJSON: Final = "application/x-ndjson"
SSE: Final = "text/event-stream"
#: The fields a stream request has beyond those of a call.
STREAM_FIELDS: Final = frozenset({"replies", "idle_timeout"})
_QUERY_NUMBERS: Final = frozenset({"timeout", "idle_timeout"})


@dataclass(slots=True)
class StreamRequest:
    """A checked stream request: the call, and the request's own end rules."""

    call: CallRequest
    replies: int | None = None
    idle_timeout: float | None = None


def parse_stream(body: object) -> StreamRequest:
    """Check a stream request object (a call request plus ``replies``, ``idle_timeout``).

    The limits of the backend (``max_replies``) are checked once it is chosen.

    Raises:
        InvalidRequest: the object is not of the documented shape; ``errors``
            lists every problem (those of the call part included).
    """
    if type(body) is not dict or not (STREAM_FIELDS & body.keys()):
        return StreamRequest(parse_call(body))
    errors: list[Mapping[str, Any]] = []
    replies = body.get("replies")
    if replies is not None and (type(replies) is not int or replies < 1):
        errors.append({"detail": "must be a whole number >= 1", "pointer": "#/replies"})
        replies = None
    idle = body.get("idle_timeout")
    if idle is not None and (
        type(idle) not in (int, float) or not math.isfinite(idle) or idle <= 0
    ):
        errors.append({"detail": "must be a number of seconds > 0", "pointer": "#/idle_timeout"})
        idle = None
    try:
        call = parse_call({key: value for key, value in body.items() if key not in STREAM_FIELDS})
    except InvalidRequest as exc:
        errors = [*exc.errors, *errors]
    if errors:
        raise InvalidRequest("the stream request is not valid", errors)
    return StreamRequest(call, replies, None if idle is None else float(idle))


def query_stream(query: bytes, *, max_bytes: int) -> StreamRequest:
    """The stream request in a query string: ``payload`` as JSON text, the other fields as text.

    Raises:
        MalformedJSON: ``payload`` is not JSON.
        InvalidRequest: a parameter is unknown, repeated or has a bad value
            (``errors`` name the parameters).
    """
    if len(query) > max_bytes:
        raise InvalidRequest(
            f"the query string is over {max_bytes} bytes",
            [_in_query("at most max_body_bytes in all", "payload")],
        )
    body: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for name, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
        if name in body:
            errors.append(_in_query("given more than once", name))
        elif name == "payload":
            try:
                body[name] = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise MalformedJSON(
                    f"the payload parameter is not valid JSON: {exc}",
                    extras={"errors": [_in_query("not valid JSON", name)]},
                ) from None
        elif name in _QUERY_NUMBERS or name == "replies":
            body[name] = _number(text, integer=name == "replies")
        else:
            body[name] = text
    try:
        request = parse_stream(body)
    except InvalidRequest as exc:
        errors += [_in_query(e["detail"], str(e["pointer"]).removeprefix("#/")) for e in exc.errors]
    if errors:
        raise InvalidRequest("the stream request is not valid", errors)
    return request


def _number(text: str, *, integer: bool) -> object:
    # A value that is no number is left as text, for parse_stream to refuse.
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return text


def _in_query(detail: str, name: str) -> dict[str, str]:
    return {"detail": detail, "parameter": name or "payload", "in": "query"}


def pick_framing(accept: str | None) -> Framing:
    """The framing ``Accept`` asks for: NDJSON unless ``text/event-stream`` comes first.

    Raises:
        NotAcceptable: ``Accept`` names only types that are neither (nor ``*/*``).
    """
    if not accept:
        return NDJSON_FRAMING
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if _refused(params):
            continue
        if media in (NDJSON, "application/*", "*/*"):
            return NDJSON_FRAMING
        if media in (SSE, "text/*"):
            return SSE_FRAMING
    raise NotAcceptable(f"a stream is written as {NDJSON} or {SSE}; the request accepts neither")


def _refused(params: str) -> bool:
    # "q=0" (or 0.0, 0.000) means "not this one".
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False


class Framing:
    """How the items of a stream are written: NDJSON lines or SSE events."""

    __slots__ = ("media_type", "sse")

    def __init__(self, media_type: str) -> None:
        self.media_type = media_type
        self.sse = media_type == SSE

    def result(self, seq: int, item: object) -> bytes:
        """The item of reply ``seq`` (from 0): ``{"result": item}``."""
        data = orjson.dumps({"result": item})
        if self.sse:
            return b"id: %d\ndata: %s\n\n" % (seq, data)
        return data + b"\n"

    def end(self, reason: str) -> bytes:
        """The last item of a complete stream: ``{"end": {"reason": reason}}``."""
        return self._last(b"end", {"end": {"reason": reason}})

    def error(self, problem: Mapping[str, Any]) -> bytes:
        """The last item of a broken stream: ``{"error": problem}``."""
        return self._last(b"error", {"error": problem})

    def _last(self, event: bytes, item: object) -> bytes:
        data = orjson.dumps(item)
        if self.sse:
            return b"event: %s\ndata: %s\n\n" % (event, data)
        return data + b"\n"

    @staticmethod
    def heartbeat() -> bytes:
        """An SSE comment: keeps proxies from closing a quiet stream; clients ignore it."""
        return b": heartbeat\n\n"


NDJSON_FRAMING: Final = Framing(NDJSON)
SSE_FRAMING: Final = Framing(SSE)
