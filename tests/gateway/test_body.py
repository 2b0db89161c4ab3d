"""parse_json: orjson's speed, with integers outside 64 bits kept exact.

orjson reads an integer outside [-2**63, 2**64) as a float; parse_json
notices and parses the text again exactly. Small bodies are checked by
scanning the text for a run of 19 digits; large ones first by walking
orjson's result for a float of 2**63 or more, falling back to the scan when
the walk would be long. Every comparison here checks types too: a float
equal to the integer would pass a plain ``==``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.body import _WALK_BUDGET, _WALK_FROM, parse_json
from gateway.problems import MalformedJSON

PAD = "x" * _WALK_FROM  # one string value that makes a body "large"
OUTSIDE_64_BITS = [
    2**64,
    3**50,  # not a power of two: a float cannot hold it exactly
    -(2**63) - 1,  # 19 digits
    -(10**19) + 7,  # 19 digits
    -(3**45),
]


def same(a: object, b: object) -> bool:
    """Equal values of the same types, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def check(document: object) -> None:
    text = json.dumps(document).encode()
    assert same(parse_json(text), json.loads(text))


@pytest.mark.parametrize("pad", ["", PAD], ids=["small", "large"])
@pytest.mark.parametrize("n", OUTSIDE_64_BITS)
def test_integers_outside_64_bits_stay_exact(pad: str, n: int) -> None:
    check({"pad": pad, "n": [n, 1], "d": {"k": n}})
    if not pad:
        check(n)


def test_a_big_integer_among_more_values_than_the_walk_takes() -> None:
    check({"pad": PAD, "n": [*range(_WALK_BUDGET * 2), -(2**63) - 1]})


@pytest.mark.parametrize("pad", ["", PAD], ids=["small", "large"])
def test_huge_floats_and_digit_strings_are_left_as_they_are(pad: str) -> None:
    check({"pad": pad, "f": 1e19, "g": -1e30, "s": "1" * 30})


def test_integers_at_the_64_bit_bounds_come_from_orjson_as_they_are() -> None:
    for n in (2**64 - 1, -(2**63), 1234567890123456789):
        check(n)


@given(
    st.recursive(
        st.integers()
        | st.integers(min_value=2**63 - 10, max_value=2**70)
        | st.integers(min_value=-(2**70), max_value=-(2**63) + 10)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=20,
    ),
    st.booleans(),
)
def test_same_values_and_types_as_the_exact_parser(value: object, large: bool) -> None:
    check({"pad": PAD if large else "", "value": value})


def test_not_json() -> None:
    with pytest.raises(MalformedJSON):
        parse_json(b"{")


@pytest.mark.parametrize("digits", [309, 310, 400, 1000, 4300])
@pytest.mark.parametrize("pad", ["", PAD], ids=["small", "large"])
def test_integers_beyond_a_double_parse_exactly(digits: int, pad: str) -> None:
    # orjson refuses these ("number is infinity when parsed as double").
    n = int("7" * digits)
    assert same(
        parse_json(f'{{"pad": "{pad}", "n": [{n}, -{n}, 1.5]}}'.encode()),
        {
            "pad": pad,
            "n": [n, -n, 1.5],
        },
    )
    assert same(parse_json(str(n).encode()), n)


def test_integers_past_pythons_own_limit_are_malformed() -> None:
    with pytest.raises(MalformedJSON, match="4300"):
        parse_json(b"[" + b"7" * 4301 + b"]")


@pytest.mark.parametrize("text", [b"1e400", b"[1, -1e400]", b'{"n": 1' + b"0" * 400 + b".5}"])
def test_floats_beyond_a_double_stay_refused(text: bytes) -> None:
    with pytest.raises(MalformedJSON, match="out of range"):
        parse_json(text)
