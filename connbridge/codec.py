"""Convert between JSON values and the Python values a backend exchanges.

JSON has no tuples, sets, bytes, dates or non-string keys, so a JSON object
whose *only* key is one of these tags stands for a typed value (an object
with more keys is a plain dict, whatever its keys look like)::

    {"$tuple": [...]}            tuple
    {"$set": [...]}              set
    {"$frozenset": [...]}        frozenset
    {"$dict": [[k, v], ...]}     dict with any hashable keys
    {"$bytes": "AP8="}           bytes (standard base64)
    {"$bytearray": "AP8="}       bytearray
    {"$int": "-123..."}          int, for those beyond orjson's 64-bit range
    {"$float": "nan"}            float: "nan", "inf" or "-inf"
    {"$complex": [re, im]}       complex
    {"$decimal": "1.10"}         decimal.Decimal, exponent and NaNs included
    {"$fraction": "-1/3"}        fractions.Fraction
    {"$datetime": "..."}         datetime.datetime, ISO 8601
    {"$date": "2024-02-29"}      datetime.date
    {"$time": "12:00:00+02:00"}  datetime.time
    {"$timedelta": 1.5}          datetime.timedelta: seconds as a number, or as
                                 an exact decimal string ("86400.000001")
    {"$uuid": "..."}             uuid.UUID
    {"$exception": {"type": "ValueError", "args": [...]}}
                                 a builtin exception, made from its args

``$dict`` is also the escape for a plain dict whose only key starts with
``$``: ``{"$dict": [["$ref", 1]]}`` is ``{"$ref": 1}``.  An unknown ``$``
tag is an error rather than a plain dict, so that a typo never passes.

:func:`from_json` turns what ``orjson.loads`` returned into Python values.
:func:`to_json` goes the other way, in one of two formats:

``"tagged"``
    The exact inverse of :func:`from_json`: what it returns reads back as
    the same value.  Not carried: a datetime's ``fold``, a timezone's name,
    an exception's attributes other than ``args``; an ``OrderedDict``
    becomes a dict, and an exception class that is not builtin is named
    ``module.QualName``, which :func:`from_json` refuses.
``"json"``
    Natural JSON for HTTP clients: tuples and sets become arrays, dates and
    times ISO strings, a timedelta its seconds, a UUID or Decimal a string.
    Values that have no natural form keep their tag: bytes, bytearray,
    complex, Fraction, non-finite floats, integers beyond 64 bits, dicts with
    non-string keys.

Both formats escape single-``$``-key dicts and render exceptions as
``$exception``.  The result of :func:`to_json` contains only ``dict``,
``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``, in forms that
``orjson.dumps`` accepts without options: string keys, 64-bit integers,
finite floats, strings without lone surrogates, and nesting within
``max_depth`` (orjson itself refuses more than :data:`ORJSON_MAX_DEPTH`).
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NoReturn

import pybase64

from .errors import PayloadError, ResultError
from .plain_types import BUILTIN_EXCEPTIONS as _EXCEPTIONS
from .plain_types import FRACTION_TEXT as _FRACTION_TEXT

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "ORJSON_MAX_DEPTH",
    "ResultFormat",
    "from_json",
    "to_json",
]

ResultFormat = Literal["json", "tagged"]

ORJSON_MAX_DEPTH: Final = 254
"""The deepest nesting ``orjson.dumps`` accepts; deeper raises ``JSONEncodeError``."""

DEFAULT_MAX_RESULT_BYTES: Final = 256 * 1024 * 1024
"""Default bound on the text (strings, base64 of bytes) in a result from :func:`to_json`.

A reply without shared references yields about as much text as its pickle
holds (4/3 of it for bytes), so this leaves room for a full 64 MiB frame.
"""

_INT_MIN: Final = -(2**63)  # orjson's integer range: signed and unsigned 64-bit
_INT_MAX: Final = 2**64 - 1

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_SECONDS_TEXT: Final = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")
_DECIMAL_TEXT: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|s?nan[0-9]*)",
    re.IGNORECASE,
)
_SUBSECOND_OFFSET: Final = re.compile(r"([+-])00:00:00\.([0-9]{6})\Z")
_FLOAT_TEXT: Final = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}

_NONE_TYPE: Final = type(None)
_JSON_SCALARS: Final = frozenset({str, int, float, bool, _NONE_TYPE})
_JSON_NAMES: Final = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    _NONE_TYPE: "null",
}


# --------------------------------------------------------------------------
# JSON -> Python


class _Fail(Exception):
    """A decoding error on its way up; each level adds its key to ``path``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str | int] = []  # innermost first


def _json_name(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _expect(tag: str, what: str, payload: object) -> NoReturn:
    raise _Fail(f"{tag} expects {what}, not {_json_name(payload)}")


def from_json(value: object, *, max_depth: int = 256) -> object:
    """Turn a decoded JSON value (what ``orjson.loads`` returns) into Python.

    Plain JSON maps to ``None``/``bool``/``int``/``float``/``str``/``list``/
    ``dict``; single-key ``$tag`` objects become typed values (see the module
    docstring).  ``value`` itself is not modified.

    Raises:
        PayloadError: an unknown ``$`` tag, a malformed tagged value, an
            unhashable set member or dict key, a value that is not JSON, or
            nesting deeper than ``max_depth`` containers.  Its ``path`` locates
            the offending value.
    """
    if type(value) in _JSON_SCALARS:
        return value
    try:
        return _decode(value, 0, max_depth)
    except _Fail as exc:
        raise PayloadError(exc.message, tuple(reversed(exc.path))) from None
    except RecursionError:
        # Only when max_depth is larger than the interpreter's stack allows.
        raise PayloadError(f"nested too deeply (max_depth={max_depth})") from None


def _decode(value: object, depth: int, limit: int) -> object:
    """Decode a non-scalar: ``depth`` containers enclose it."""
    if type(value) is list:
        return _decode_list(value, depth, limit)
    if type(value) is dict:
        if len(value) == 1:
            ((key, payload),) = value.items()
            if type(key) is str and key[:1] == "$":
                decode_tag = _TAGS.get(key)
                if decode_tag is None:
                    raise _Fail(
                        f"unknown tag {key!r} (a plain object with this single key "
                        'is written {"$dict": [[key, value]]})'
                    )
                if depth >= limit:
                    raise _Fail(f"nested deeper than {limit} levels")
                try:
                    return decode_tag(payload, depth + 1, limit)
                except _Fail as exc:
                    exc.path.append(key)
                    raise
        return _decode_object(value, depth, limit)
    if type(value) in _JSON_SCALARS:
        return value
    raise _Fail(f"{type(value).__name__} is not a JSON value")


def _decode_list(items: list[Any], depth: int, limit: int) -> list[Any]:
    if depth >= limit:
        raise _Fail(f"nested deeper than {limit} levels")
    depth += 1
    out: list[Any] = []
    append = out.append
    index = 0
    try:
        for index, item in enumerate(items):  # noqa: B007 (read in the handler)
            append(item if type(item) in _JSON_SCALARS else _decode(item, depth, limit))
    except _Fail as exc:
        exc.path.append(index)
        raise
    return out


def _decode_object(obj: dict[str, Any], depth: int, limit: int) -> dict[str, Any]:
    if depth >= limit:
        raise _Fail(f"nested deeper than {limit} levels")
    depth += 1
    out = {}
    key = ""
    try:
        for key, item in obj.items():
            out[key] = item if type(item) in _JSON_SCALARS else _decode(item, depth, limit)
    except _Fail as exc:
        exc.path.append(key)
        raise
    return out


def _decode_array(tag: str, payload: object, depth: int, limit: int) -> list[Any]:
    if type(payload) is not list:
        _expect(tag, "an array", payload)
    return _decode_list(payload, depth, limit)


def _decode_text(tag: str, payload: object) -> str:
    if type(payload) is not str:
        _expect(tag, "a string", payload)
    return payload


def _tag_tuple(payload: object, depth: int, limit: int) -> object:
    return tuple(_decode_array("$tuple", payload, depth, limit))


def _tag_of_members(
    tag: str, kind: type[set[Any]] | type[frozenset[Any]]
) -> Callable[[object, int, int], object]:
    """The decoder of ``$set`` or ``$frozenset``: an array of hashable members."""

    def decode(payload: object, depth: int, limit: int) -> object:
        items = _decode_array(tag, payload, depth, limit)
        try:
            return kind(items)
        except TypeError as exc:
            raise _Fail(f"{tag} members must be hashable: {exc}") from None

    return decode


def _tag_dict(payload: object, depth: int, limit: int) -> object:
    pairs = _decode_array("$dict", payload, depth, limit)
    out = {}
    for index, pair in enumerate(pairs):
        if type(pair) is not list or len(pair) != 2:
            exc = _Fail("$dict expects [key, value] pairs")
            exc.path.append(index)
            raise exc
        try:
            out[pair[0]] = pair[1]
        except TypeError as error:
            exc = _Fail(f"$dict keys must be hashable: {error}")
            exc.path += [0, index]
            raise exc from None
    return out


def _base64(tag: str, payload: object) -> bytes:
    # pybase64 (SIMD) decodes and validates 14 MB in about 5 ms, where
    # binascii took 26 ms and base64.b64decode(validate=True) about 45 ms.
    try:
        return pybase64.b64decode(_decode_text(tag, payload), validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character
        raise _Fail(f"{tag} expects standard base64: {exc}") from None


def _tag_bytes(payload: object, depth: int, limit: int) -> object:
    return _base64("$bytes", payload)


def _tag_bytearray(payload: object, depth: int, limit: int) -> object:
    return bytearray(_base64("$bytearray", payload))


def _tag_int(payload: object, depth: int, limit: int) -> object:
    text = _decode_text("$int", payload)
    if not _INT_TEXT.fullmatch(text):
        raise _Fail("$int expects decimal digits")
    try:
        return int(text)
    except ValueError as exc:  # more digits than sys.get_int_max_str_digits()
        raise _Fail(f"$int: {exc}") from None


def _tag_float(payload: object, depth: int, limit: int) -> object:
    number = _FLOAT_TEXT.get(_decode_text("$float", payload))
    if number is None:
        raise _Fail('$float expects "nan", "inf" or "-inf"')
    return number


def _tag_complex(payload: object, depth: int, limit: int) -> object:
    parts = _decode_array("$complex", payload, depth, limit)
    if len(parts) != 2 or not all(type(part) in (int, float) for part in parts):
        raise _Fail("$complex expects [real, imag] numbers")
    return complex(parts[0], parts[1])


def _tag_decimal(payload: object, depth: int, limit: int) -> object:
    text = _decode_text("$decimal", payload)
    if not _DECIMAL_TEXT.fullmatch(text):
        raise _Fail(f"$decimal expects a decimal number, not {text[:40]!r}")
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:  # an exponent beyond the decimal module's range
        value = None
    # Under a context that does not trap InvalidOperation, the same is a NaN.
    if value is None or (value.is_nan() and "nan" not in text.lower()):
        raise _Fail(f"$decimal out of range: {text[:40]!r}")
    return value


def _tag_fraction(payload: object, depth: int, limit: int) -> object:
    # Fraction's own parser also takes exponents ("1e999999999") and would
    # expand them into huge integers; only "n" and "n/d" are accepted.
    match = _FRACTION_TEXT.fullmatch(_decode_text("$fraction", payload))
    if match is None:
        raise _Fail('$fraction expects "numerator/denominator"')
    numerator, denominator = match.groups()
    if denominator is not None and not denominator.strip("0"):
        raise _Fail("$fraction has a zero denominator")
    try:
        return fractions.Fraction(int(numerator), int(denominator or 1))
    except ValueError as exc:  # more digits than sys.get_int_max_str_digits()
        raise _Fail(f"$fraction: {exc}") from None


def _iso(tag: str, parse: Callable[[str], Any], payload: object) -> object:
    text = _decode_text(tag, payload)
    try:
        value = parse(text)
    except ValueError as exc:
        raise _Fail(f"{tag} expects an ISO 8601 string: {exc}") from None
    if getattr(value, "tzinfo", None) is not None:
        # CPython (3.11-3.13 at least) reads an offset of less than a second,
        # "+00:00:00.000001" as isoformat() writes it, as UTC.
        match = _SUBSECOND_OFFSET.search(text)
        if match is not None:
            micro = int(match[2])
            offset = datetime.timedelta(microseconds=-micro if match[1] == "-" else micro)
            value = value.replace(tzinfo=datetime.timezone(offset))
    return value


def _tag_datetime(payload: object, depth: int, limit: int) -> object:
    return _iso("$datetime", datetime.datetime.fromisoformat, payload)


def _tag_date(payload: object, depth: int, limit: int) -> object:
    return _iso("$date", datetime.date.fromisoformat, payload)


def _tag_time(payload: object, depth: int, limit: int) -> object:
    return _iso("$time", datetime.time.fromisoformat, payload)


def _tag_timedelta(payload: object, depth: int, limit: int) -> object:
    try:
        if type(payload) is int or type(payload) is float:
            return datetime.timedelta(seconds=payload)
        match = _SECONDS_TEXT.fullmatch(_decode_text("$timedelta", payload))
        if match is None:
            raise _Fail('$timedelta expects seconds: a number or a string like "1.000001"')
        sign, whole, fraction = match.groups()
        fraction = (fraction or "").rstrip("0")
        if len(fraction) > 6:
            raise _Fail("$timedelta is exact to the microsecond")
        if len(whole) > 20:  # far beyond timedelta.max; spare int() the digits
            raise OverflowError("too many seconds")
        micro = int(whole) * 1_000_000 + int(fraction.ljust(6, "0"))
        return datetime.timedelta(microseconds=-micro if sign == "-" else micro)
    except (OverflowError, ValueError) as exc:
        raise _Fail(f"$timedelta out of range: {exc}") from None


def _tag_uuid(payload: object, depth: int, limit: int) -> object:
    try:
        return uuid.UUID(_decode_text("$uuid", payload))
    except ValueError as exc:
        raise _Fail(f"$uuid: {exc}") from None


def _tag_exception(payload: object, depth: int, limit: int) -> object:
    if type(payload) is not dict:
        _expect("$exception", 'an object {"type": name, "args": [...]}', payload)
    if not payload.keys() <= {"type", "args"}:
        raise _Fail('$exception takes only the keys "type" and "args"')
    name = payload.get("type")
    cls = _EXCEPTIONS.get(name) if type(name) is str else None
    if cls is None:
        shown = repr(name)[:60]
        exc = _Fail(f"$exception type must name a builtin exception, not {shown}")
        exc.path.append("type")
        raise exc
    try:
        args = _decode_array("$exception args", payload.get("args", []), depth + 1, limit)
    except _Fail as exc:
        exc.path.append("args")
        raise
    try:
        return cls(*args)
    # ArithmeticError: a Unicode error's start or end beyond a C ssize_t
    # raises OverflowError; any builtin's refusal of its args is the client's.
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise _Fail(f"$exception: cannot create {name}: {exc}") from None


_TAGS: Final[dict[str, Callable[[object, int, int], object]]] = {
    "$tuple": _tag_tuple,
    "$set": _tag_of_members("$set", set),
    "$frozenset": _tag_of_members("$frozenset", frozenset),
    "$dict": _tag_dict,
    "$bytes": _tag_bytes,
    "$bytearray": _tag_bytearray,
    "$int": _tag_int,
    "$float": _tag_float,
    "$complex": _tag_complex,
    "$decimal": _tag_decimal,
    "$fraction": _tag_fraction,
    "$datetime": _tag_datetime,
    "$date": _tag_date,
    "$time": _tag_time,
    "$timedelta": _tag_timedelta,
    "$uuid": _tag_uuid,
    "$exception": _tag_exception,
}


# --------------------------------------------------------------------------
# Python -> JSON


def to_json(
    obj: object,
    *,
    format: ResultFormat = "json",
    max_depth: int = 250,
    max_nodes: int = 1_000_000,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    rendered: Mapping[type, Callable[[Any], object]] | None = None,
) -> object:
    """Turn a Python value from a backend into a JSON-ready structure.

    ``format`` picks natural JSON (``"json"``) or the lossless tagged form
    (``"tagged"``); see the module docstring.  ``max_depth`` bounds the
    nesting of the *output* (orjson refuses more than
    :data:`ORJSON_MAX_DEPTH` levels; the default leaves room for an
    envelope around the result).  ``max_nodes`` bounds the number of
    container items visited, so that a small pickle that shares one list
    many times cannot expand into an enormous document; ``max_bytes`` does
    the same for the text inside it, so that one large string (or integer,
    Decimal...) shared many times cannot either. It counts characters before
    JSON escaping: of strings and dict keys, of base64 for bytes, of the
    digits of large integers, and of every value written as text (Decimal,
    Fraction, dates, UUIDs).  ``rendered`` maps types of the caller's own
    (which no pickle can make, such as :class:`connbridge.manager.NestedProxy`)
    to functions whose output stands for their values as it is: it must
    already be JSON-ready.

    Raises:
        ResultError: a value of a type with no JSON form (named in the
            message), a string with lone surrogates, an integer too large to
            print, a malformed allowed object, nesting deeper than
            ``max_depth`` (or a cycle), more than ``max_nodes`` items, or
            more than ``max_bytes`` of text.
        ValueError: ``format`` is neither ``"json"`` nor ``"tagged"``.
    """
    # Fast path: a scalar that needs no conversion (the encoder repeats these
    # checks for values inside containers).
    value: Any = obj
    kind = type(value)
    if kind is str:
        if len(value) <= max_bytes and (value.isascii() or not _SURROGATE.search(value)):
            return value
    elif kind is bool or value is None:
        return value
    elif kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
    elif kind is float and value - value == 0.0:  # finite
        return value
    if format == "tagged":
        handlers = _TAGGED
    elif format == "json":
        handlers = _NATURAL
    else:
        raise ValueError(f"format must be 'json' or 'tagged', not {format!r}")
    if rendered:
        handlers = {**handlers, **{kind: _as_is(render) for kind, render in rendered.items()}}
    encoder = _Encoder(handlers, max_depth, max_nodes, max_bytes)
    try:
        return encoder.encode(obj, 0)
    except RecursionError:
        raise ResultError(f"the result is nested too deeply (max_depth={max_depth})") from None
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # Only reachable through objects that a hostile pickle put together
        # from allowed parts in ways their classes never would.
        raise ResultError(f"cannot convert the result: {type(exc).__name__}: {exc}") from exc


_Handler = Callable[["_Encoder", Any, int], object]


class _Encoder:
    """One conversion: the format's handlers and the remaining node budget.

    ``depth`` arguments count the JSON containers that will enclose the
    value's output; a value that becomes ``n`` nested containers checks
    ``depth + n`` against the limit.  The loops avoid comprehensions (a frame
    of their own before Python 3.12), so that a level of nesting costs at
    most two Python frames: 250 levels stay inside the default recursion
    limit even below a deep web-framework stack.
    """

    __slots__ = ("budget", "handlers", "int_texts", "max_bytes", "max_depth", "text_budget")

    def __init__(
        self, handlers: dict[type, _Handler], max_depth: int, max_nodes: int, max_bytes: int
    ) -> None:
        self.handlers = handlers
        self.max_depth = max_depth
        self.budget = max_nodes
        self.max_bytes = max_bytes
        self.text_budget = max_bytes
        #: Text of the large integers converted so far, by id (see _int_text).
        self.int_texts: dict[int, str] = {}

    def spend_text(self, size: int) -> None:
        """Account for ``size`` characters of output text."""
        self.text_budget -= size
        if self.text_budget < 0:
            raise ResultError(
                f"the result would be larger than {self.max_bytes} bytes of text (max_bytes)"
            )

    def enter(self, depth: int, levels: int, items: int) -> int:
        """Account for a container of ``items`` items ``levels`` deep; return the items' depth."""
        depth += levels
        if depth > self.max_depth:
            raise ResultError(
                f"the result is nested deeper than {self.max_depth} levels "
                "(or contains a reference cycle)"
            )
        self.budget -= items
        if self.budget < 0:
            raise ResultError("the result has too many items (max_nodes exceeded)")
        return depth

    def encode(self, value: Any, depth: int) -> object:
        kind = type(value)
        if kind is str:
            self.spend_text(len(value))
            if value.isascii() or not _SURROGATE.search(value):
                return value
            raise ResultError("a string in the result contains lone surrogates")
        if kind is int:
            if _INT_MIN <= value <= _INT_MAX:
                return value
            return {"$int": _int_text(value, self, depth)}
        if kind is float:
            if value - value == 0.0:  # finite
                return value
            return _float_tag(value, self, depth)
        if kind is bool or value is None:
            return value
        if kind is list:
            return self.array(value, depth)
        if kind is dict:
            return self.dict(value, depth)
        handler = self.handlers.get(kind)
        if handler is not None:
            return handler(self, value, depth)
        if isinstance(value, BaseException):
            return _exception(self, value, depth)
        raise ResultError(f"cannot convert a value of type {_type_name(kind)} to JSON")

    def array(self, values: Any, depth: int, levels: int = 1) -> list[object]:
        """Encode the items of ``values`` as an array nested ``levels`` below ``depth``.

        Also the json format's handler for tuples, sets and frozensets.
        """
        inner = self.enter(depth, levels, len(values))
        out: list[object] = []
        append = out.append
        encode = self.encode
        for item in values:
            append(encode(item, inner))
        return out

    def dict(self, value: dict[Any, Any], depth: int) -> object:
        plain = True
        key_text = 0
        for key in value:
            if type(key) is not str:
                plain = False
                continue
            key_text += len(key)
            if not key.isascii() and _SURROGATE.search(key):
                raise ResultError("a dict key in the result contains lone surrogates")
        encode = self.encode
        if plain and not (len(value) == 1 and next(iter(value))[:1] == "$"):
            self.spend_text(key_text)  # the $dict form below counts its keys as values
            inner = self.enter(depth, 1, len(value))
            out: dict[str, object] = {}
            for key, item in value.items():
                out[key] = encode(item, inner)
            return out
        # Non-string keys, or a single "$" key that would read as a tag.
        inner = self.enter(depth, 3, len(value))
        pairs: list[list[object]] = []
        append = pairs.append
        for key, item in value.items():
            append([encode(key, inner), encode(item, inner)])
        return {"$dict": pairs}


def _type_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _int_text(value: int, encoder: _Encoder, depth: int) -> str:
    encoder.enter(depth, 1, 0)
    # Counted before converting (digits from the bit length, rounded up), and
    # converted once per object: int-to-text takes time quadratic in the digits,
    # and one large integer may be shared by every item of a list.
    encoder.spend_text(value.bit_length() * 30103 // 100000 + 2)
    known = encoder.int_texts.get(id(value))
    if known is not None:
        return known
    try:
        text = str(value)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        raise ResultError(
            f"an integer in the result has too many digits (about {value.bit_length() * 3 // 10})"
        ) from None
    encoder.int_texts[id(value)] = text  # the result holds value: its id stays unique
    return text


def _float_tag(value: float, encoder: _Encoder, depth: int) -> object:
    encoder.enter(depth, 1, 0)
    return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}


def _tagged_array(tag: str) -> _Handler:
    def handler(encoder: _Encoder, value: Any, depth: int) -> object:
        return {tag: encoder.array(value, depth, 2)}

    return handler


def _ordered_dict(encoder: _Encoder, value: OrderedDict[Any, Any], depth: int) -> object:
    return encoder.dict(value, depth)


def _scalar_tag(tag: str, convert: Callable[[Any], object]) -> _Handler:
    def handler(encoder: _Encoder, value: Any, depth: int) -> object:
        encoder.enter(depth, 1, 0)
        return {tag: _counted(encoder, convert(value))}

    return handler


def _counted(encoder: _Encoder, converted: object) -> object:
    """Charge a value's text form (a Decimal's digits, a date...) to the text budget."""
    if type(converted) is str:
        encoder.spend_text(len(converted))
    return converted


def _bytes_tag(tag: str) -> _Handler:
    def handler(encoder: _Encoder, value: bytes | bytearray, depth: int) -> object:
        encoder.enter(depth, 1, 0)
        encoder.spend_text((len(value) + 2) // 3 * 4)  # the base64 length
        return {tag: pybase64.b64encode_as_string(value)}

    return handler


def _complex(encoder: _Encoder, value: complex, depth: int) -> object:
    inner = encoder.enter(depth, 2, 2)
    return {"$complex": [encoder.encode(value.real, inner), encoder.encode(value.imag, inner)]}


def _fraction_text(value: fractions.Fraction) -> str:
    numerator, denominator = value.numerator, value.denominator
    if type(numerator) is not int or type(denominator) is not int or denominator <= 0:
        raise ResultError("a Fraction in the result is malformed")
    return f"{numerator}/{denominator}"


def _uuid_text(value: uuid.UUID) -> str:
    number = getattr(value, "int", None)
    if type(number) is not int or not 0 <= number < 1 << 128:
        raise ResultError("a UUID in the result is malformed")
    return str(value)


def _timedelta_seconds(value: datetime.timedelta) -> float | str:
    """Seconds as a float when that is exact, else as an exact decimal string."""
    micro = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    seconds = micro / 1_000_000
    try:
        if datetime.timedelta(seconds=seconds) == value:
            return seconds
    except OverflowError:  # the float rounded past timedelta.max
        pass
    whole, fraction = divmod(abs(micro), 1_000_000)
    sign = "-" if micro < 0 else ""
    return f"{sign}{whole}.{fraction:06d}".rstrip("0").rstrip(".")


def _exception_name(kind: type) -> str:
    # Builtins by their plain name (what from_json accepts); anything else
    # (an extra-allowlisted class) by its full name, which from_json refuses.
    name = kind.__name__
    return name if _EXCEPTIONS.get(name) is kind else _type_name(kind)


def _exception(encoder: _Encoder, value: BaseException, depth: int) -> object:
    return {
        "$exception": {
            "type": _exception_name(type(value)),
            "args": encoder.array(value.args, depth, 3),
        }
    }


def _as_is(render: Callable[[Any], object]) -> _Handler:
    def handler(encoder: _Encoder, value: Any, depth: int) -> object:
        encoder.enter(depth, 1, 1)
        return render(value)

    return handler


def _natural(convert: Callable[[Any], object]) -> _Handler:
    def handler(encoder: _Encoder, value: Any, depth: int) -> object:
        return _counted(encoder, convert(value))

    return handler


_COMMON: Final[dict[type, _Handler]] = {
    OrderedDict: _ordered_dict,
    bytes: _bytes_tag("$bytes"),
    bytearray: _bytes_tag("$bytearray"),
    complex: _complex,
    fractions.Fraction: _scalar_tag("$fraction", _fraction_text),
}

_TAGGED: Final[dict[type, _Handler]] = {
    **_COMMON,
    tuple: _tagged_array("$tuple"),
    set: _tagged_array("$set"),
    frozenset: _tagged_array("$frozenset"),
    decimal.Decimal: _scalar_tag("$decimal", str),
    datetime.datetime: _scalar_tag("$datetime", datetime.datetime.isoformat),
    datetime.date: _scalar_tag("$date", datetime.date.isoformat),
    datetime.time: _scalar_tag("$time", datetime.time.isoformat),
    datetime.timedelta: _scalar_tag("$timedelta", _timedelta_seconds),
    uuid.UUID: _scalar_tag("$uuid", _uuid_text),
}

_NATURAL: Final[dict[type, _Handler]] = {
    **_COMMON,
    tuple: _Encoder.array,
    set: _Encoder.array,
    frozenset: _Encoder.array,
    decimal.Decimal: _natural(str),
    datetime.datetime: _natural(datetime.datetime.isoformat),
    datetime.date: _natural(datetime.date.isoformat),
    datetime.time: _natural(datetime.time.isoformat),
    datetime.timedelta: _natural(datetime.timedelta.total_seconds),
    uuid.UUID: _natural(_uuid_text),
}
