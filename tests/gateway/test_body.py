"""parse_json: orjson's speed, with integers beyond 64 bits kept exact.

orjson reads such an integer as a float; parse_json notices and parses the
text again exactly. Small bodies are checked by scanning the text for a run
of 20 digits; large ones first by walking orjson's result for a float of
2**63 or more, falling back to the scan when the walk would be long.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.body import _WALK_BUDGET, _WALK_FROM, parse_json
from gateway.problems import MalformedJSON

BIG = 2**70
PAD = "x" * _WALK_FROM  # one string value that makes a body "large"


def body(value: object, *, big_literal: str | None = None) -> bytes:
    text = json.dumps(value)
    if big_literal is not None:
        text = text.replace('"BIG"', big_literal)
    return text.encode()


@pytest.mark.parametrize("pad", ["", PAD], ids=["small", "large"])
def test_a_big_integer_stays_exact(pad: str) -> None:
    parsed = parse_json(body({"pad": pad, "n": ["BIG", 1]}, big_literal=str(BIG)))
    assert parsed["n"] == [BIG, 1]
    assert type(parsed["n"][0]) is int


def test_a_big_integer_among_more_values_than_the_walk_takes() -> None:
    many = [*range(_WALK_BUDGET * 2), "BIG"]
    parsed = parse_json(body({"pad": PAD, "n": many}, big_literal=str(-BIG)))
    assert parsed["n"][-1] == -BIG


@pytest.mark.parametrize("pad", ["", PAD], ids=["small", "large"])
def test_huge_floats_and_digit_strings_are_left_as_they_are(pad: str) -> None:
    parsed = parse_json(body({"pad": pad, "f": "BIG", "s": "1" * 30}, big_literal="1e19"))
    assert parsed["f"] == 1e19 and type(parsed["f"]) is float
    assert parsed["s"] == "1" * 30


def test_integers_up_to_64_bits_come_from_orjson_as_they_are() -> None:
    for n in (2**64 - 1, -(2**63)):
        assert parse_json(str(n).encode()) == n


@given(
    st.recursive(
        st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=20,
    ),
    st.booleans(),
)
def test_same_value_as_the_exact_parser(value: object, large: bool) -> None:
    document = {"pad": PAD if large else "", "value": value}
    text = json.dumps(document).encode()
    assert parse_json(text) == json.loads(text)


def test_not_json() -> None:
    with pytest.raises(MalformedJSON):
        parse_json(b"{")
