"""How long a call may take: the backend's ``call_timeout``, which a request can only shorten.

A request has two ways to ask for less time, and neither can ask for more:

* the ``timeout`` member of a call's body (a JSON number of seconds > 0),
  checked with the rest of the body (:mod:`gateway.calls`,
  :mod:`gateway.object_calls`, :mod:`gateway.streams`);
* the ``Request-Timeout`` header (:data:`REQUEST_TIMEOUT`), for proxies and
  HTTP client libraries that cannot touch the body, read by
  :func:`header_timeout`. On ``/ws`` it comes with the upgrade and bounds
  each call made on the socket, not the socket's life.

:func:`effective_timeout` is the one rule that combines them: the smallest
of all, and a value over the backend's own limit is not an error, it just
changes nothing, so that a client cannot hold a pooled connection longer
than the operator allows. A call that runs out of time gets the same 504
``backend-timeout`` whichever limit was the smallest; its ``detail`` gives
the seconds it had.

The header's value is a number of seconds written as JSON writes a
positive number (``2.5``, ``30``, ``1e-3``), since that is what the body's
``timeout`` takes and what clients' number formatting produces; at most
:data:`MAX_HEADER_CHARS` characters. Anything else (empty, a sign, ``nan``,
``inf``, zero, a value too small to be told from zero or too large to be
finite, the header given twice) is 422 ``invalid-request-timeout``, as an
invalid ``timeout`` in the body is 422.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from .problems import InvalidRequestTimeout
from .state import Backend

__all__ = ["MAX_HEADER_CHARS", "REQUEST_TIMEOUT", "effective_timeout", "header_timeout"]

#: The header's name, as documented (HTTP header names are case-insensitive).
REQUEST_TIMEOUT: Final = "Request-Timeout"
_KEY: Final = REQUEST_TIMEOUT.lower().encode("ascii")
#: The longest value read: any float's shortest text fits (``2.2250738585072014e-308``).
MAX_HEADER_CHARS: Final = 32
_NUMBER: Final = re.compile(rb"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def header_timeout(scope: Mapping[str, Any]) -> float | None:
    """The seconds of the request's ``Request-Timeout`` header, or None without one.

    Raises:
        InvalidRequestTimeout: the header is given more than once, or its
            value is not a number of seconds > 0 (see the module docstring).
    """
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == _KEY:
            if found is not None:
                raise _invalid("is given more than once; send one value")
            found = bytes(value)
    if found is None:
        return None
    text = found.strip(b" \t")
    if not text:
        raise _invalid("is empty; send a number of seconds > 0, such as 2.5")
    if len(text) > MAX_HEADER_CHARS:
        raise _invalid(f"has more than {MAX_HEADER_CHARS} characters")
    seconds = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        shown = text.decode("latin-1")
        raise _invalid(f"must be a number of seconds > 0, such as 2.5, not {shown!r}")
    return seconds


def _invalid(detail: str) -> InvalidRequestTimeout:
    return InvalidRequestTimeout(
        f"the {REQUEST_TIMEOUT} header {detail}",
        [{"detail": detail, "parameter": REQUEST_TIMEOUT, "in": "header"}],
    )


def effective_timeout(backend: Backend, *asked: float | None) -> float | None:
    """The timeout to give the pool: the smallest asked for, if under the backend's own.

    ``asked`` are the request's limits in seconds (the body's ``timeout``,
    the ``Request-Timeout`` header), None where not given. None comes back
    when the backend's ``call_timeout`` is the smallest: the pool's default.
    """
    shortest = min((seconds for seconds in asked if seconds is not None), default=None)
    if shortest is None or shortest >= backend.timeout:
        return None
    return shortest
