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
3. The bytes are parsed with orjson, else 400.

orjson reads integers beyond 64 bits as floats. To keep them exact, a body
that holds a run of 20 or more digits (anywhere, strings included) is
parsed again with the standard library, which keeps big integers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson
from starlette.requests import Request

from connbridge.errors import PayloadError

from .problems import BodyTooLarge, MalformedJSON, UnsupportedMediaType

__all__ = ["is_json_media_type", "parse_json", "read_json"]

_LONG_DIGITS: Final = re.compile(rb"[0-9]{20}")
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
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    if _LONG_DIGITS.search(body) is None:
        return value
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise PayloadError("the JSON nests too deeply") from None
    except ValueError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None


async def read_json(request: Request, limit: int) -> Any:
    """Check, read (at most ``limit`` bytes) and parse the JSON body of ``request``.

    Raises:
        UnsupportedMediaType: the body is not declared as UTF-8 JSON (415).
        BodyTooLarge: the body is longer than ``limit`` bytes (413).
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
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(
                f"the request body is longer than the limit of {limit} bytes",
                extras={"limit": limit},
                headers=_CLOSE,
            )
        chunks.append(chunk)
    return parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))
