"""Reading a JSON request body: media type first, size while streaming, then parsing.

The compute routes read their bodies here rather than through a pydantic
body model: it is the hot path, and these checks must come in a fixed order
with fixed answers:

1. ``Content-Type`` must be ``application/json`` or ``application/<x>+json``
   (charset, if given, UTF-8), else 415. A form-encoded or ``text/plain``
   body is refused even when it would parse as JSON: browsers send those
   cross-site without a CORS preflight.
2. A ``Content-Length`` over the limit is refused at once with 413; without
   one (chunked), bytes are counted as they arrive and reading stops at the
   first chunk past the limit (the rest is never buffered, and the response
   closes the connection).
3. A body that stalls, no byte arriving for ``timeout`` seconds (``[gateway]
   body_timeout``), is refused with 408 and the connection is closed: a
   request that announces ``Content-Length: 100`` and sends 17 bytes does
   not hold its connection forever.
4. The bytes are parsed with orjson, else 400.

orjson reads integers beyond 64 bits as floats, and refuses those beyond
a double's range (310 digits and more). To keep them exact, a body that
holds a run of 19 or more digits (anywhere, strings included) is parsed
again with the standard library, which keeps big integers up to Python's
own limit (``sys.get_int_max_str_digits()``, 4,300 digits by default); so is
a body orjson refused for a number out of a double's range. A float literal
out of that range (``1e400``) is still refused: the standard library would
read it as infinity, which JSON has no word for.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request

from connbridge.errors import PayloadError

from .problems import BodyTooLarge, MalformedJSON, RequestTimeout, UnsupportedMediaType

__all__ = ["is_json_media_type", "parse_json", "read_json"]

# orjson reads an integer outside [-2**63, 2**64) as a float; the shortest
# such literals have 19 digits (-9223372036854775809). Every digit maps to
# "0" (other bytes are left as they are, and none of them is "0"), so a run
# of 19 digits becomes a run of 19 zeros: translate() and a substring search
# run in C at memory speed, where a regex took half the time of a 10 MiB call.
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"0123456789", b"0" * 10)
_NINETEEN_ZEROS: Final = b"0" * 19
# From this size on, a body is first checked by walking what orjson made of
# it: a 14 MB base64 string is one value to walk but 14 MB of text to scan.
_WALK_FROM: Final = 64 * 1024
_WALK_BUDGET: Final = 4096
_HUGE: Final = float(2**63)
_CLOSE: Final = {"Connection": "close"}


def is_json_media_type(value: str | None) -> bool:
    """True for ``application/json`` and ``application/*+json`` in UTF-8 (or no charset)."""
    if not value:
        return False
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number - number != 0.0:  # 1e400 reads as infinity
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


# What orjson says of a number it cannot hold in a double: an integer may
# still be valid (and exact) for the standard library.
_OUT_OF_DOUBLE: Final = "number is infinity when parsed as double"


def _has_huge_float(value: Any, budget: int = _WALK_BUDGET) -> bool | None:
    """True if ``value`` holds a float of 2**63 or more in magnitude.

    orjson turns an integer beyond 64 bits into such a float, so without one
    the text needs no exact second parse. ``None`` when the walk gives up
    after ``budget`` values: a body of many small values is then cheaper to
    scan as text.
    """
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return None
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if abs(item) >= _HUGE:
                return True
        elif kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.values())
    return False


def parse_json(body: bytes) -> Any:
    """Parse JSON bytes, keeping integers beyond 64 bits exact.

    Raises:
        MalformedJSON: the bytes are not JSON (or not UTF-8).
        PayloadError: the JSON nests too deeply to parse.
    """
    if not body:
        raise MalformedJSON("the request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise PayloadError("the JSON nests too deeply") from None
        if not str(exc).startswith(_OUT_OF_DOUBLE):
            raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
        return _parse_exactly(body)
    huge = _has_huge_float(value) if len(body) >= _WALK_FROM else None
    if huge is False:
        return value
    if huge is None and _NINETEEN_ZEROS not in body.translate(_DIGITS_TO_ZERO):
        return value
    return _parse_exactly(body)


def _parse_exactly(body: bytes) -> Any:
    """The standard library's parse: integers of any length, up to Python's limit."""
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise PayloadError("the JSON nests too deeply") from None
    except ValueError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None


async def read_json(request: Request, limit: int, timeout: float | None) -> Any:
    """Check, read (at most ``limit`` bytes) and parse the JSON body of ``request``.

    ``timeout`` bounds the wait for each piece of the body (``None``: no
    bound). It has no default, so that no route forgets ``body_timeout``.

    Raises:
        UnsupportedMediaType: the body is not declared as UTF-8 JSON (415).
        BodyTooLarge: the body is longer than ``limit`` bytes (413).
        RequestTimeout: no byte of the body came for ``timeout`` seconds (408).
        MalformedJSON: the body is not valid JSON (400).
        PayloadError: the JSON nests too deeply to parse (422).
    """
    headers = request.headers
    if not is_json_media_type(headers.get("content-type")):
        raise UnsupportedMediaType(
            "the request body must be JSON: send 'Content-Type: application/json'"
        )
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            size = -1
        if size > limit:
            raise BodyTooLarge(
                f"the request body has {size} bytes; the limit is {limit}",
                extras={"limit": limit},
                headers=_CLOSE,
            )
    chunks: list[bytes] = []
    received = 0
    receive = request.receive
    stall = None if timeout is None else _Stall(timeout)
    more = True
    while more:
        if stall is None:
            message = await receive()
        else:
            with stall:
                message = await receive()
            if stall.stalled:
                raise RequestTimeout(
                    f"the request body stalled: nothing came for {timeout:g} s "
                    f"after {received} bytes",
                    headers=_CLOSE,
                )
        if message["type"] != "http.request":
            raise ClientDisconnect  # http.disconnect: answered by its handler
        more = message.get("more_body", False)
        chunk = message.get("body", b"")
        if not chunk:
            continue
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(
                f"the request body is longer than the limit of {limit} bytes",
                extras={"limit": limit},
                headers=_CLOSE,
            )
        chunks.append(chunk)
    return parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class _Stall:
    """Ends the wait for the next piece of a body after ``timeout`` seconds.

    ``asyncio.timeout()`` does the same at about 4 us a time, and asks for the
    running loop three times (on Python 3.11, three ``getpid()`` system
    calls); a body read once per request, in one piece or two, made that three
    times per request. This one takes the task and its loop once, and arms
    one timer per wait. As with ``asyncio.timeout()``, the wait is cancelled
    when the time is up; ``with`` turns that cancellation into
    :attr:`stalled`, unless the task was also cancelled for another reason.
    """

    def __init__(self, timeout: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body is read in a task")
        self._task = task
        self._loop = task.get_loop()
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        #: The last wait was ended by the timeout.
        self.stalled = False

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> None:
        self._expired = False
        self._timer = self._loop.call_later(self._timeout, self._expire)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        assert self._timer is not None
        self._timer.cancel()
        if not self._expired:
            return False
        # Our cancellation is spent here; it ended the wait unless another came too.
        self.stalled = self._task.uncancel() == 0 and kind is asyncio.CancelledError
        return self.stalled
