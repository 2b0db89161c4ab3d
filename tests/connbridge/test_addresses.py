"""Address spellings."""

from __future__ import annotations

import pytest

from connbridge.addresses import Address, parse_address
from connbridge.errors import AddressError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:11111", Address("tcp", host="127.0.0.1", port=11111)),
        ("localhost:80", Address("tcp", host="localhost", port=80)),
        (
            "adder.default.svc.cluster.local:11111",
            Address("tcp", host="adder.default.svc.cluster.local", port=11111),
        ),
        ("[::1]:8080", Address("tcp", host="::1", port=8080)),
        ("unix:/run/adder.sock", Address("unix", path="/run/adder.sock")),
        ("unix:@adder", Address("unix", path="\0adder")),
        (("127.0.0.1", 5), Address("tcp", host="127.0.0.1", port=5)),
        (("", 5), Address("tcp", host="127.0.0.1", port=5)),
    ],
)
def test_accepted_spellings(text: object, expected: Address) -> None:
    assert parse_address(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["127.0.0.1:11111", "[::1]:8080", "unix:/run/a.sock", "unix:@adder", "example.org:1"]
)
def test_str_round_trips(text: str) -> None:
    assert str(parse_address(text)) == text
    assert parse_address(str(parse_address(text))) == parse_address(text)


@pytest.mark.parametrize(
    "text",
    [r"\\.\pipe\adder", "//./pipe/adder", "pipe:adder"],
)
def test_windows_named_pipes_are_refused_clearly(text: str) -> None:
    with pytest.raises(AddressError, match="named pipe"):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        ":80",
        "host:http",
        "host:70000",
        "::1:80",
        "[::1]80",
        "[nope]:1",
        "unix:",
        "unix:@",
        "/tmp/x.sock",
    ],
)
def test_bad_addresses_raise_address_error(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_address("nonsense")


def test_loopback_detection() -> None:
    assert parse_address("127.0.0.2:1").is_loopback
    assert parse_address("[::1]:1").is_loopback
    assert parse_address("localhost:1").is_loopback
    assert parse_address("unix:/x").is_loopback
    assert not parse_address("10.0.0.1:1").is_loopback
    assert not parse_address("example.org:1").is_loopback
