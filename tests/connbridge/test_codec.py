"""JSON <-> Python: every tag, both output formats, and the limits."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import fractions
import inspect
import math
import pickle
import sys
import time
import uuid
from typing import Any

import orjson
import pytest

from connbridge import codec
from connbridge.codec import ORJSON_MAX_DEPTH, from_json, to_json
from connbridge.errors import PayloadError, PickleLimitExceeded, ResultError
from connbridge.unpickler import loads, make_loads

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))
U = uuid.UUID("12345678-1234-5678-1234-567812345678")


def dumps(value: object) -> bytes:
    """orjson without options: what the gateway does with every output."""
    return orjson.dumps(value)


def test_exports() -> None:
    assert set(codec.__all__) == {
        "DEFAULT_MAX_RESULT_BYTES",
        "ORJSON_MAX_DEPTH",
        "ResultFormat",
        "from_json",
        "to_json",
    }
    for name in codec.__all__:
        assert hasattr(codec, name)


# -- JSON -> Python -------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, 0, -5, 2**64 - 1, 1.5, "", "x", "$tuple"])
def test_scalars_pass_through(value: object) -> None:
    assert from_json(value) is value


def test_plain_containers_are_copied_not_changed() -> None:
    original = {"a": [1, {"b": None}], "c": {}}
    snapshot = orjson.loads(dumps(original))
    result = from_json(original)
    assert result == original and result is not original
    assert original == snapshot


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"$tuple": [1, [2], {"$tuple": []}]}', (1, [2], ())),
        ('{"$set": [1, 2, 2, {"$tuple": [3]}]}', {1, 2, (3,)}),
        ('{"$frozenset": [{"$frozenset": []}]}', frozenset({frozenset()})),
        (
            '{"$dict": [[1, "a"], [{"$tuple": [2, 3]}, "b"], [null, []]]}',
            {1: "a", (2, 3): "b", None: []},
        ),
        ('{"$dict": [["$tuple", 1]]}', {"$tuple": 1}),
        ('{"$dict": []}', {}),
        ('{"$bytes": "AP8="}', b"\x00\xff"),
        ('{"$bytes": ""}', b""),
        ('{"$bytearray": "YWJj"}', bytearray(b"abc")),
        ('{"$int": "123456789012345678901234567890"}', 123456789012345678901234567890),
        ('{"$int": "-42"}', -42),
        ('{"$complex": [1, -2.5]}', complex(1, -2.5)),
        ('{"$decimal": "1.10"}', decimal.Decimal("1.10")),
        ('{"$decimal": "-1E+3"}', decimal.Decimal("-1E+3")),
        ('{"$fraction": "-6/4"}', fractions.Fraction(-3, 2)),
        ('{"$fraction": "7"}', fractions.Fraction(7)),
        ('{"$datetime": "2020-01-02T03:04:05.000006"}', dt.datetime(2020, 1, 2, 3, 4, 5, 6)),
        (
            '{"$datetime": "2020-01-02T03:04:05+02:00"}',
            dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=PLUS2),
        ),
        ('{"$datetime": "2020-01-02T01:04:05Z"}', dt.datetime(2020, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ('{"$date": "2024-02-29"}', dt.date(2024, 2, 29)),
        ('{"$time": "23:59:59.999999"}', dt.time(23, 59, 59, 999999)),
        ('{"$time": "01:02:03+02:00"}', dt.time(1, 2, 3, tzinfo=PLUS2)),
        ('{"$timedelta": 86400}', dt.timedelta(days=1)),
        ('{"$timedelta": -1.5}', dt.timedelta(seconds=-1.5)),
        ('{"$timedelta": "86400.000001"}', dt.timedelta(days=1, microseconds=1)),
        ('{"$timedelta": "-0.5000000"}', dt.timedelta(microseconds=-500000)),
        ('{"$uuid": "12345678-1234-5678-1234-567812345678"}', U),
        ('{"$uuid": "{12345678123456781234567812345678}"}', U),
        ('{"$tuple": [1], "x": 2}', {"$tuple": [1], "x": 2}),
        ('{"tuple": [1]}', {"tuple": [1]}),
        ('{"a": {"$set": []}}', {"a": set()}),
    ],
)
def test_tags(text: str, expected: object) -> None:
    got = from_json(orjson.loads(text))
    assert got == expected
    assert type(got) is type(expected)


def test_subsecond_offsets_survive() -> None:
    # isoformat() writes these; the stdlib's fromisoformat() would read UTC.
    for micro in (1, -1, 999999, -500000):
        zone = dt.timezone(dt.timedelta(microseconds=micro))
        for value in (dt.datetime(2000, 1, 1, tzinfo=zone), dt.time(1, 2, 3, 4, tzinfo=zone)):
            back = from_json(to_json(value, format="tagged"))
            assert isinstance(back, dt.datetime | dt.time)
            assert back.utcoffset() == dt.timedelta(microseconds=micro)
            assert back == value


def test_special_floats() -> None:
    assert math.isnan(from_json({"$float": "nan"}))  # type: ignore[arg-type]
    assert from_json({"$float": "inf"}) == math.inf
    assert from_json({"$float": "-inf"}) == -math.inf
    got = from_json({"$complex": [{"$float": "nan"}, {"$float": "-inf"}]})
    assert isinstance(got, complex) and math.isnan(got.real) and got.imag == -math.inf


def test_decimal_specials_keep_their_identity() -> None:
    for text in ("NaN", "-sNaN12", "Infinity", "-0.000", "1E+999999"):
        got = from_json({"$decimal": text})
        assert isinstance(got, decimal.Decimal)
        assert got.compare_total(decimal.Decimal(text)) == 0


def test_exception_tag() -> None:
    got = from_json({"$exception": {"type": "ValueError", "args": ["bad", {"$tuple": [1]}]}})
    assert type(got) is ValueError and got.args == ("bad", (1,))
    got = from_json({"$exception": {"type": "KeyboardInterrupt"}})
    assert type(got) is KeyboardInterrupt and got.args == ()
    got = from_json({"$exception": {"type": "OSError", "args": [2, "gone"]}})
    assert type(got) is FileNotFoundError
    got = from_json(
        {
            "$exception": {
                "type": "ExceptionGroup",
                "args": ["many", [{"$exception": {"type": "TypeError", "args": []}}]],
            }
        }
    )
    assert isinstance(got, ExceptionGroup) and type(got.exceptions[0]) is TypeError


@pytest.mark.parametrize(
    ("text", "message", "path"),
    [
        ('{"$foo": 1}', "'\\$foo'", ()),
        ('[0, {"a": {"$nope": []}}]', "'\\$nope'", (1, "a")),
        ('{"$": 1}', "unknown tag '\\$'", ()),
        ('{"$tuple": 5}', "\\$tuple expects an array, not a number", ("$tuple",)),
        ('{"$set": [[1]]}', "hashable", ("$set",)),
        ('{"$frozenset": [{"a": 1}]}', "hashable", ("$frozenset",)),
        ('{"$set": [{"$decimal": "sNaN"}]}', "hashable", ("$set",)),
        ('{"$dict": [[1, 2], [3]]}', "pairs", ("$dict", 1)),
        ('{"$dict": [[[1], 2]]}', "hashable", ("$dict", 0, 0)),
        ('{"$dict": {"a": 1}}', "expects an array", ("$dict",)),
        ('{"$bytes": "not base64!"}', "base64", ("$bytes",)),
        ('{"$bytes": "YQ"}', "base64", ("$bytes",)),
        ('{"$bytes": "\u00e9AAA"}', "base64", ("$bytes",)),
        ('{"$bytes": 5}', "expects a string, not a number", ("$bytes",)),
        ('{"$int": "12x"}', "digits", ("$int",)),
        ('{"$int": "1.0"}', "digits", ("$int",)),
        ('{"$int": "' + "9" * 5000 + '"}', "\\$int", ("$int",)),
        ('{"$float": "NaN"}', "nan", ("$float",)),
        ('{"$float": 1.0}', "string", ("$float",)),
        ('{"$complex": [1]}', "\\[real, imag\\]", ("$complex",)),
        ('{"$complex": [true, 1]}', "\\[real, imag\\]", ("$complex",)),
        ('{"$complex": ["1", 1]}', "\\[real, imag\\]", ("$complex",)),
        ('{"$decimal": "1,5"}', "decimal number", ("$decimal",)),
        ('{"$decimal": " 1"}', "decimal number", ("$decimal",)),
        ('{"$decimal": "1e99999999999999999999"}', "out of range", ("$decimal",)),
        ('{"$decimal": 1.5}', "string", ("$decimal",)),
        ('{"$fraction": "1/0"}', "zero denominator", ("$fraction",)),
        ('{"$fraction": "1e999999999"}', "numerator/denominator", ("$fraction",)),
        ('{"$fraction": "1.5"}', "numerator/denominator", ("$fraction",)),
        ('{"$datetime": "yesterday"}', "ISO 8601", ("$datetime",)),
        ('{"$date": "2021-02-29"}', "ISO 8601", ("$date",)),
        ('{"$time": "25:00"}', "ISO 8601", ("$time",)),
        ('{"$timedelta": "1.0000001"}', "microsecond", ("$timedelta",)),
        ('{"$timedelta": "1e3"}', "seconds", ("$timedelta",)),
        ('{"$timedelta": true}', "string", ("$timedelta",)),
        ('{"$timedelta": 1e20}', "out of range", ("$timedelta",)),
        ('{"$timedelta": "' + "9" * 30 + '"}', "out of range", ("$timedelta",)),
        ('{"$uuid": "xyz"}', "\\$uuid", ("$uuid",)),
        ('{"$exception": {"type": "Foo"}}', "builtin exception", ("$exception", "type")),
        ('{"$exception": {"type": "print"}}', "builtin exception", ("$exception", "type")),
        ('{"$exception": {"type": 5}}', "builtin exception", ("$exception", "type")),
        ('{"$exception": {"type": "ValueError", "x": 1}}', "only the keys", ("$exception",)),
        ('{"$exception": {"type": "ValueError", "args": 1}}', "array", ("$exception", "args")),
        (
            '{"$exception": {"type": "UnicodeDecodeError", "args": [1]}}',
            "cannot create",
            ("$exception",),
        ),
        ('{"$exception": []}', "object", ("$exception",)),
        (  # OverflowError: a start beyond a C ssize_t
            '{"$exception": {"type": "UnicodeEncodeError", "args": '
            '["utf-8", "x", 1267650600228229401496703205376, 1, "r"]}}',
            "cannot create UnicodeEncodeError",
            ("$exception",),
        ),
        (
            '{"$exception": {"type": "UnicodeDecodeError", "args": '
            '["utf-8", {"$bytes": "eA=="}, 1, -1267650600228229401496703205376, "r"]}}',
            "cannot create UnicodeDecodeError",
            ("$exception",),
        ),
    ],
)
def test_payload_errors(text: str, message: str, path: tuple[object, ...]) -> None:
    with pytest.raises(PayloadError, match=message) as info:
        from_json(orjson.loads(text))
    assert info.value.path == path
    assert isinstance(info.value, ValueError)


def test_nested_error_path() -> None:
    value = orjson.loads('{"a": [0, {"$tuple": [1, {"$set": [[2]]}]}]}')
    with pytest.raises(PayloadError) as info:
        from_json(value)
    assert info.value.path == ("a", 1, "$tuple", 1, "$set")
    assert "(at /a/1/$tuple/1/$set)" in str(info.value)


def test_non_json_input_is_refused() -> None:
    with pytest.raises(PayloadError, match="tuple is not a JSON value") as info:
        from_json([1, (2,)])
    assert info.value.path == (1,)


def nested_lists(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def test_from_json_depth_limit() -> None:
    assert from_json(orjson.loads(nested_lists(256))) is not None
    with pytest.raises(PayloadError, match="deeper than 256"):
        from_json(orjson.loads(nested_lists(257)))
    with pytest.raises(PayloadError, match="deeper than 3"):
        from_json([[[[]]]], max_depth=3)
    assert from_json([[[]]], max_depth=3) == [[[]]]
    # A tag object counts as a level, like any JSON object.
    with pytest.raises(PayloadError, match="deeper than 2"):
        from_json([{"$tuple": []}], max_depth=2)
    assert from_json([{"$int": "1"}], max_depth=2) == [1]
    with pytest.raises(PayloadError, match="deeper than 1"):
        from_json({"a": {"b": 1}}, max_depth=1)


def test_from_json_deep_input_is_an_error_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = {"$tuple": [deep]}
    with pytest.raises(PayloadError, match="deeper than 256"):
        from_json(deep)
    with pytest.raises(PayloadError, match="nested too deeply"):
        from_json(deep, max_depth=10**6)


# -- Python -> JSON ---------------------------------------------------------------------


def both(value: object) -> tuple[object, object]:
    """The value in both formats, each checked to be what orjson accepts."""
    natural = to_json(value)
    tagged = to_json(value, format="tagged")
    dumps(natural)
    dumps(tagged)
    return natural, tagged


@pytest.mark.parametrize(
    ("value", "natural", "tagged"),
    [
        (None, None, None),
        (True, True, True),
        (-(2**63), -(2**63), -(2**63)),
        (2**64 - 1, 2**64 - 1, 2**64 - 1),
        (2**64, {"$int": str(2**64)}, {"$int": str(2**64)}),
        (-(2**63) - 1, {"$int": str(-(2**63) - 1)}, {"$int": str(-(2**63) - 1)}),
        (-0.0, -0.0, -0.0),
        (math.inf, {"$float": "inf"}, {"$float": "inf"}),
        (-math.inf, {"$float": "-inf"}, {"$float": "-inf"}),
        ("é", "é", "é"),
        ([1, (2,)], [1, [2]], [1, {"$tuple": [2]}]),
        ((), [], {"$tuple": []}),
        ({3}, [3], {"$set": [3]}),
        (frozenset(), [], {"$frozenset": []}),
        (b"\x00\xff", {"$bytes": "AP8="}, {"$bytes": "AP8="}),
        (bytearray(b"abc"), {"$bytearray": "YWJj"}, {"$bytearray": "YWJj"}),
        (complex(1, -2), {"$complex": [1.0, -2.0]}, {"$complex": [1.0, -2.0]}),
        (decimal.Decimal("1.10"), "1.10", {"$decimal": "1.10"}),
        (decimal.Decimal("-sNaN"), "-sNaN", {"$decimal": "-sNaN"}),
        (fractions.Fraction(-1, 3), {"$fraction": "-1/3"}, {"$fraction": "-1/3"}),
        (fractions.Fraction(4), {"$fraction": "4/1"}, {"$fraction": "4/1"}),
        (dt.date(2024, 2, 29), "2024-02-29", {"$date": "2024-02-29"}),
        (dt.time(1, 2, 3, 4), "01:02:03.000004", {"$time": "01:02:03.000004"}),
        (
            dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC),
            "2020-01-02T03:04:05+00:00",
            {"$datetime": "2020-01-02T03:04:05+00:00"},
        ),
        (dt.timedelta(days=1), 86400.0, {"$timedelta": 86400.0}),
        (dt.timedelta(days=1, microseconds=1), 86400.000001, {"$timedelta": 86400.000001}),
        (U, str(U), {"$uuid": str(U)}),
        ({"a": (1,)}, {"a": [1]}, {"a": {"$tuple": [1]}}),
        ({"$a": 1, "b": 2}, {"$a": 1, "b": 2}, {"$a": 1, "b": 2}),
        ({"$a": 1}, {"$dict": [["$a", 1]]}, {"$dict": [["$a", 1]]}),
        ({"$a": (1,)}, {"$dict": [["$a", [1]]]}, {"$dict": [["$a", {"$tuple": [1]}]]}),
        ({"a": 1, 2: "b"}, {"$dict": [["a", 1], [2, "b"]]}, {"$dict": [["a", 1], [2, "b"]]}),
        (
            {(1, 2): {3}},
            {"$dict": [[[1, 2], [3]]]},
            {"$dict": [[{"$tuple": [1, 2]}, {"$set": [3]}]]},
        ),
        (collections.OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}, {"b": 1, "a": 2}),
        (
            ValueError("bad", (1,)),
            {"$exception": {"type": "ValueError", "args": ["bad", [1]]}},
            {"$exception": {"type": "ValueError", "args": ["bad", {"$tuple": [1]}]}},
        ),
        (
            SystemExit(2),
            {"$exception": {"type": "SystemExit", "args": [2]}},
            {"$exception": {"type": "SystemExit", "args": [2]}},
        ),
    ],
)
def test_to_json_formats(value: object, natural: object, tagged: object) -> None:
    assert both(value) == (natural, tagged)


def test_nan_keeps_its_tag() -> None:
    assert both(math.nan) == ({"$float": "nan"}, {"$float": "nan"})
    assert both([math.nan]) == ([{"$float": "nan"}], [{"$float": "nan"}])


def test_timedelta_seconds_are_exact_in_tagged_form() -> None:
    # A float would round these: the tagged form falls back to exact text.
    for value, text in [
        (dt.timedelta.max, "86399999999999.999999"),
        (dt.timedelta(days=10**8, microseconds=1), "8640000000000.000001"),
        (-dt.timedelta(days=10**8, microseconds=1), "-8640000000000.000001"),
        (dt.timedelta(days=10**8, microseconds=10), "8640000000000.00001"),
    ]:
        assert to_json(value, format="tagged") == {"$timedelta": text}
        assert from_json({"$timedelta": text}) == value
    for value in (dt.timedelta.min, dt.timedelta(0), dt.timedelta(microseconds=-1)):
        out = to_json(value, format="tagged")
        assert isinstance(out, dict) and type(out["$timedelta"]) is float
        assert from_json(out) == value
    # The natural form is always a number (a close one when not exact).
    assert to_json(dt.timedelta.max) == dt.timedelta.max.total_seconds()


def test_exception_names() -> None:
    class AppError(Exception):
        pass

    assert to_json(AppError("x")) == {
        "$exception": {"type": f"{__name__}.{AppError.__qualname__}", "args": ["x"]}
    }
    assert to_json(OSError(2, "gone", "/f")) == {
        "$exception": {"type": "FileNotFoundError", "args": [2, "gone"]}
    }


@pytest.mark.parametrize(
    "value",
    ["\ud800", ["ok", "a\udfffb"], {"k\udc80": 1}, {1: "\ud83d"}, ("\ud800",), {"\ud800": 1, 2: 3}],
)
def test_lone_surrogates_are_result_errors(value: object) -> None:
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value if isinstance(value, str) else ["\ud800"])
    for fmt in ("json", "tagged"):
        with pytest.raises(ResultError, match="surrogates"):
            to_json(value, format=fmt)


def test_surrogates_come_from_pickles() -> None:
    assert loads(pickle.dumps("\udcff", 0)) == "\udcff"
    with pytest.raises(ResultError, match="surrogates"):
        to_json(loads(pickle.dumps(["\udcff"], 4)))


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (collections.Counter("ab"), "collections.Counter"),
        (object(), "object"),
        (print, "builtin_function_or_method"),
        ([1, collections.defaultdict(int)], "collections.defaultdict"),
        ({"a": range(3)}, "range"),
        (dt.UTC, "datetime.timezone"),
    ],
)
def test_unknown_types_are_named(value: object, name: str) -> None:
    for fmt in ("json", "tagged"):
        with pytest.raises(ResultError, match=f"type {name} "):
            to_json(value, format=fmt)


def test_huge_integers() -> None:
    limit = sys.get_int_max_str_digits()
    big = 10 ** (limit - 1)
    assert to_json(big) == {"$int": str(big)}
    with pytest.raises(ResultError, match="too many digits"):
        to_json([10**limit])


def test_malformed_objects_from_hostile_pickles() -> None:
    broken = uuid.UUID(int=1)
    object.__setattr__(broken, "int", "not a number")
    loaded = loads(pickle.dumps(broken, 2))  # the state dict carries the bad value
    for fmt in ("json", "tagged"):
        with pytest.raises(ResultError, match="UUID"):
            to_json([loaded], format=fmt)
    fraction = fractions.Fraction(1, 3)
    object.__setattr__(fraction, "_numerator", "x")  # as BUILD's slot state could
    with pytest.raises(ResultError, match="Fraction"):
        to_json(fraction)


def test_format_is_checked() -> None:
    with pytest.raises(ValueError, match="format"):
        to_json([1], format="xml")  # type: ignore[arg-type]


# -- limits --------------------------------------------------------------------------


def nest(levels: int, wrap: Any) -> object:
    value: object = 0
    for _ in range(levels):
        value = wrap(value)
    return value


def json_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    return 0


@pytest.mark.parametrize(
    "wrap",
    [
        lambda v: [v],
        lambda v: (v,),
        lambda v: {"k": v},
        lambda v: {1: v},
        lambda v: {"$k": v},
        lambda v: ValueError(v),
        lambda v: [complex(v, 0)] if isinstance(v, int) else [v],
        lambda v: [10**30 if v == 0 else v],
        lambda v: [math.nan if v == 0 else v],
    ],
)
@pytest.mark.parametrize("fmt", ["json", "tagged"])
def test_to_json_depth_bounds_the_output(wrap: Any, fmt: Any) -> None:
    for limit in (1, 2, 3, 7, 250, ORJSON_MAX_DEPTH):
        deepest = 0
        for levels in range(1, limit + 2):
            try:
                out = to_json(nest(levels, wrap), format=fmt, max_depth=limit)
            except ResultError as exc:
                assert "nested deeper" in str(exc)
                break
            assert json_depth(out) <= limit
            deepest = json_depth(out)
            if limit <= ORJSON_MAX_DEPTH:
                dumps(out)
        assert deepest >= limit - 2  # the limit is reached, not undercut
    with pytest.raises(orjson.JSONEncodeError):
        dumps(nest(ORJSON_MAX_DEPTH + 1, lambda v: [v]))


def test_default_depth_leaves_room_for_an_envelope() -> None:
    out = to_json(nest(250, lambda v: [v]))
    dumps({"id": 1, "result": {"value": out}})
    with pytest.raises(ResultError, match="deeper than 250"):
        to_json(nest(251, lambda v: [v]))


def test_deep_results_under_a_deep_call_stack() -> None:
    # The gateway calls to_json from deep inside a web framework.
    # A level costs the encoder at most two frames.
    def descend(frames: int, value: object, fmt: Any) -> object:
        if frames:
            return descend(frames - 1, value, fmt)
        return to_json(value, format=fmt)

    values = [
        nest(125, lambda v: {"a": (v,)}),
        nest(250, lambda v: (v,)),
        nest(250, lambda v: [v]),
        nest(250, lambda v: {"a": v}),
    ]
    stack = len(inspect.stack(0))
    for value in values:
        assert json_depth(descend(450 - stack, value, "json")) == 250
    for value in (nest(125, lambda v: (v,)), nest(83, lambda v: {1: v})):
        assert json_depth(descend(450 - stack, value, "tagged")) >= 249


def test_cycles_are_result_errors() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ResultError, match="cycle"):
        to_json(cyclic)
    mapping: dict[str, Any] = {}
    mapping["self"] = [mapping]
    with pytest.raises(ResultError, match="cycle"):
        to_json(mapping, format="tagged")
    with pytest.raises(ResultError, match="cycle"):
        to_json(loads(pickle.dumps(cyclic, 4)))


def test_shared_list_bomb_fails_fast() -> None:
    a = [1] * 1000
    b = [a] * 1000
    c = [b] * 1000
    data = pickle.dumps(c, 4)
    assert len(data) < 10_000  # small on the wire
    with pytest.raises(PickleLimitExceeded, match="max_nodes"):
        loads(data)  # the unpickler refuses it first (issue 12)
    lenient = make_loads(max_nodes=2**40)
    started = time.monotonic()
    for fmt in ("json", "tagged"):
        with pytest.raises(ResultError, match="max_nodes"):
            to_json(lenient(data), format=fmt)
    assert time.monotonic() - started < 5.0


def test_shared_string_bomb_fails_fast() -> None:
    # One 1 MiB string (and one 1 MiB bytes) referenced 1,000 times: 1 MiB on
    # the wire, over 1 GiB of JSON if expanded.
    text, blob = "x" * 2**20, b"y" * 2**20
    for shared in (text, blob):
        data = pickle.dumps([shared] * 1000, 4)
        assert len(data) < 2**20 + 10_000
        for fmt in ("json", "tagged"):
            with pytest.raises(ResultError, match="max_bytes"):
                to_json(loads(data), format=fmt, max_bytes=64 * 2**20)


@pytest.mark.parametrize(
    "shared",
    [
        int("7" * 4000),  # a large integer: its text, and quadratic time to make it
        decimal.Decimal("1" * 100_000),
        fractions.Fraction(int("3" * 3000), 7),
    ],
    ids=["int", "decimal", "fraction"],
)
def test_shared_values_written_as_text_count_too(shared: object) -> None:
    data = pickle.dumps([shared] * 20_000, 4)
    started = time.monotonic()
    for fmt in ("json", "tagged"):
        with pytest.raises(ResultError, match="max_bytes"):
            to_json(loads(data), format=fmt, max_bytes=16 * 2**20)
    assert time.monotonic() - started < 5.0


def test_max_bytes_counts_strings_keys_and_base64() -> None:
    assert to_json(["ab", {"cd": "e"}], max_bytes=5) == ["ab", {"cd": "e"}]
    with pytest.raises(ResultError, match="max_bytes"):
        to_json(["ab", {"cd": "ef"}], max_bytes=5)
    assert to_json([b"abc"], max_bytes=4) == [{"$bytes": "YWJj"}]  # 3 bytes: 4 of base64
    with pytest.raises(ResultError, match="max_bytes"):
        to_json([b"abcd"], max_bytes=7)  # 4 bytes: 8 of base64
    with pytest.raises(ResultError, match="max_bytes"):
        to_json({(1,): "abcdef"}, max_bytes=5)  # also in the $dict form
    assert to_json({1: 0, "abc": 0}, max_bytes=3) == {"$dict": [[1, 0], ["abc", 0]]}  # once
    with pytest.raises(ResultError, match="max_bytes"):
        to_json("abcdef", max_bytes=5)  # a lone string as well


def test_max_nodes_counts_items() -> None:
    assert to_json([[1, 2], [3]], max_nodes=5) == [[1, 2], [3]]
    with pytest.raises(ResultError, match="max_nodes"):
        to_json([[1, 2], [3]], max_nodes=4)
    assert to_json({"a": 1, 2: 3}, max_nodes=2) == {"$dict": [["a", 1], [2, 3]]}
    with pytest.raises(ResultError, match="max_nodes"):
        to_json({"a": (1, 2)}, max_nodes=2)
