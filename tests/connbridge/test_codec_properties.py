"""Round trips over generated values: JSON -> Python -> pickle -> Python -> JSON, and back."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import pickle
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connbridge.codec import from_json, to_json
from connbridge.errors import PayloadError
from connbridge.unpickler import loads, make_dumps

SETTINGS = settings(max_examples=200, deadline=None)
DUMPS = {protocol: make_dumps(protocol) for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1)}
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


def same(a: object, b: object) -> bool:
    """Equal, of the same type, exactly: NaN equals NaN, 0.0 differs from -0.0,
    Decimal("1.10") from Decimal("1.1"); sets compare in any order; exceptions by args;
    aware times also by their UTC offset."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, complex):
        assert isinstance(b, complex)
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, decimal.Decimal):
        assert isinstance(b, decimal.Decimal)
        return a.compare_total(b) == 0
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, set | frozenset):
        assert isinstance(b, set | frozenset)
        rest = list(b)
        for item in a:
            match = next((i for i, other in enumerate(rest) if same(item, other)), None)
            if match is None:
                return False
            del rest[match]
        return not rest
    if isinstance(a, BaseException):
        assert isinstance(b, BaseException)
        return same(a.args, b.args)
    if isinstance(a, dt.datetime | dt.time):
        assert isinstance(b, dt.datetime | dt.time)
        return a.utcoffset() == b.utcoffset() and a == b
    return a == b


def test_same_can_tell_values_apart() -> None:
    # The comparison the properties rely on is strict where it matters.
    assert same([math.nan, {1.5}], [math.nan, {1.5}])
    assert not same(0.0, -0.0)
    assert not same(1, True)
    assert not same((1,), [1])
    assert not same(decimal.Decimal("1.10"), decimal.Decimal("1.1"))
    assert not same({1: 2, 3: 4}, {3: 4, 1: 2})
    assert not same(frozenset({1, 2}), frozenset({1, 3}))
    assert not same(ValueError(1), ValueError(2))
    assert not same(ValueError(1), TypeError(1))
    utc = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert not same(utc, utc.astimezone(dt.timezone(dt.timedelta(hours=1))))


# -- Python-side values ---------------------------------------------------------------

offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-23, minutes=-59, seconds=-59),
    max_value=dt.timedelta(hours=23, minutes=59, seconds=59),
)
zones = st.none() | st.builds(dt.timezone, offsets) | st.builds(dt.timezone, offsets, st.text())
big_ints = st.integers(min_value=UINT64_MAX + 1, max_value=2**300) | st.integers(
    min_value=-(2**300), max_value=INT64_MIN - 1
)
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    st.floats(),
    st.text(),
    st.binary(),
    st.complex_numbers(),
    st.decimals(allow_nan=True).filter(lambda d: not d.is_snan()),
    st.fractions(),
    st.uuids(),
    st.dates(),
    st.times(timezones=zones),
    st.datetimes(timezones=zones),
    st.timedeltas(),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
EXCEPTION_TYPES = [ValueError, KeyError, RuntimeError, Exception, ArithmeticError, SystemExit]


def python_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(), inner, max_size=4),
        st.dictionaries(st.sampled_from(["$tuple", "$x", "$", "a"]), inner, max_size=2),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
        st.builds(
            lambda kind, args: kind(*args),
            st.sampled_from(EXCEPTION_TYPES),
            st.lists(inner, max_size=2),
        ),
    )


python_values = st.recursive(
    hashables | st.binary().map(bytearray) | st.decimals(allow_nan=True),
    python_containers,
    max_leaves=20,
)


@SETTINGS
@given(python_values)
def test_tagged_output_reads_back_as_the_same_value(value: object) -> None:
    out = to_json(value, format="tagged")
    wire = orjson.dumps(out)  # no options: must never raise
    assert same(from_json(orjson.loads(wire)), value)


@SETTINGS
@given(python_values)
def test_json_output_is_always_valid_json(value: object) -> None:
    out = to_json(value)
    wire = orjson.dumps(out)
    assert orjson.loads(wire) == out


# -- JSON-side values -------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def seconds_text(delta: dt.timedelta) -> str:
    micro = (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds
    whole, fraction = divmod(abs(micro), 10**6)
    return f"{'-' if micro < 0 else ''}{whole}.{fraction:06d}"


json_floats = st.floats(allow_nan=False, allow_infinity=False)
special_floats = st.sampled_from(["nan", "inf", "-inf"]).map(lambda text: {"$float": text})
json_hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=UINT64_MAX),
    json_floats,
    st.text(),
    st.integers().map(lambda n: {"$int": str(n)}),
    special_floats,
    st.binary().map(lambda data: {"$bytes": b64(data)}),
    st.lists(
        json_floats | st.integers(-(2**53), 2**53) | special_floats, min_size=2, max_size=2
    ).map(lambda parts: {"$complex": parts}),
    st.decimals(allow_nan=True)
    .filter(lambda d: not d.is_snan())
    .map(lambda d: {"$decimal": str(d)}),
    st.tuples(st.integers(), st.integers(min_value=1)).map(
        lambda nd: {"$fraction": f"{nd[0]}/{nd[1]}"}
    ),
    st.datetimes(timezones=zones).map(lambda d: {"$datetime": d.isoformat()}),
    st.dates().map(lambda d: {"$date": d.isoformat()}),
    st.times(timezones=zones).map(lambda t: {"$time": t.isoformat()}),
    st.timedeltas().map(lambda d: {"$timedelta": seconds_text(d)}),
    st.integers(-(10**9), 10**9).map(lambda n: {"$timedelta": n}),
    st.uuids().flatmap(
        lambda u: st.sampled_from([str(u), u.hex, str(u).upper()]).map(lambda s: {"$uuid": s})
    ),
)
json_hashables = st.recursive(
    json_hashable_leaves,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: {"$tuple": items})
        | st.lists(inner, max_size=3).map(lambda items: {"$frozenset": items})
    ),
    max_leaves=8,
)
plain_keys = st.text().filter(lambda key: not key.startswith("$"))


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(plain_keys, inner, max_size=4),
        # Several keys: a plain object even when they look like tags.
        st.dictionaries(st.sampled_from(["$tuple", "$set", "$x", "y"]), inner, min_size=2),
        st.lists(inner, max_size=4).map(lambda items: {"$tuple": items}),
        st.lists(json_hashables, max_size=3).map(lambda items: {"$set": items}),
        st.lists(st.tuples(json_hashables, inner).map(list), max_size=3).map(
            lambda pairs: {"$dict": pairs}
        ),
        st.tuples(st.sampled_from(EXCEPTION_TYPES), st.lists(inner, max_size=2)).map(
            lambda ta: {"$exception": {"type": ta[0].__name__, "args": ta[1]}}
        ),
    )


json_values = st.recursive(
    json_hashables
    | st.binary().map(lambda data: {"$bytearray": b64(data)})
    | st.just({"$decimal": "-sNaN7"}),
    json_containers,
    max_leaves=20,
)


@SETTINGS
@given(json_values)
def test_json_through_pickle_and_back(value: object) -> None:
    # What a request and its echoed reply go through in the gateway.
    python = from_json(orjson.loads(orjson.dumps(value)))
    for protocol, dumps in DUMPS.items():
        received = loads(dumps(python))
        assert same(received, python), protocol
        out = to_json(received, format="tagged")
        assert same(from_json(orjson.loads(orjson.dumps(out))), python), protocol


# -- arbitrary JSON ---------------------------------------------------------------------

TAG_NAMES = [
    "$tuple", "$set", "$frozenset", "$dict", "$bytes", "$bytearray", "$int", "$float",
    "$complex", "$decimal", "$fraction", "$datetime", "$date", "$time", "$timedelta",
    "$uuid", "$exception", "$", "$other",
]  # fmt: skip
any_json = st.recursive(
    st.none() | st.booleans() | st.integers(INT64_MIN, UINT64_MAX) | json_floats | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.sampled_from(TAG_NAMES), inner, max_size=3)
        | st.tuples(st.sampled_from(TAG_NAMES), inner).map(lambda kv: {kv[0]: kv[1]})
    ),
    max_leaves=20,
)


@SETTINGS
@given(any_json)
def test_from_json_only_ever_raises_payload_error(value: object) -> None:
    try:
        python = from_json(value)
    except PayloadError as exc:
        assert str(exc)
        return
    # Whatever it accepted can be sent back out.
    orjson.dumps(to_json(python, format="tagged"))
    orjson.dumps(to_json(python))
