"""Hostile pickles that are small to send and costly to load (test helper).

Each builder returns the bytes a compromised backend could send. :data:`BOMBS`
names them for the unpickler tests and for ``tests/gateway/pickle_bomb_backend.py``,
which serves them to a real gateway. Plain Python 3, no imports from connbridge:
the backend script runs it too.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable

PROTO4 = b"\x80\x04"
MEMOIZE = b"\x94"
STOP = b"."


def binget(index: int) -> bytes:
    return b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)


def global_(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def deep_tuples_in_a_set(depth: int = 1_000_000) -> bytes:
    """A million nested 1-tuples added to a set: hashing them overflows the C stack."""
    return PROTO4 + b"\x8f()" + b"\x85" * depth + b"\x90" + STOP


def _shared_tuples(levels: int) -> bytes:
    # () then, level after level, (t, t) of the previous level through the memo:
    # a few bytes per level, 2**levels leaves once expanded. The last level is
    # left on top of the stack (and in the memo at index ``levels``).
    out = [PROTO4, b")", MEMOIZE]
    for level in range(1, levels + 1):
        out += [binget(level - 1), binget(level - 1), b"\x86", MEMOIZE]
    return b"".join(out)


def shared_tuples_in_a_set(levels: int = 40) -> bytes:
    """40 levels of shared tuples as a set member: 2**40 steps to hash."""
    return _shared_tuples(levels) + b"\x8f(" + binget(levels) + b"\x90" + STOP


def shared_tuples_as_a_dict_key(levels: int = 40) -> bytes:
    """The same tuple as a dict key."""
    return _shared_tuples(levels) + b"}" + binget(levels) + b"Ns" + STOP


def shared_tuples_in_a_frozenset(levels: int = 40) -> bytes:
    """The same tuple as a frozenset item."""
    return _shared_tuples(levels) + b"(" + binget(levels) + b"\x91" + STOP


def shared_tuples_through_set(levels: int = 40) -> bytes:
    """The same tuple hashed by a call to ``builtins.set``."""
    return (
        _shared_tuples(levels)
        + global_("builtins", "set")
        + b"]"
        + binget(levels)
        + b"a\x85R"
        + STOP
    )


def _big_list_then_calls(func: bytes, items: int, calls: int) -> bytes:
    # ``func`` (memo 0) called ``calls`` times on one memoized list of
    # ``items`` Nones (memo 1); the results are kept in a list.
    return b"".join(
        [
            PROTO4,
            func,
            MEMOIZE,
            b"(",
            b"N" * items,
            b"l",
            MEMOIZE,
            b"0",
            b"](",
            (binget(0) + binget(1) + b"\x85R") * calls,
            b"e",
            STOP,
        ]
    )


def list_copies(items: int = 1_000_000, calls: int = 250) -> bytes:
    """``builtins.list`` on one memoized million-item list, 250 times: 2 GiB."""
    return _big_list_then_calls(global_("builtins", "list"), items, calls)


def tuple_copies(items: int = 1_000_000, calls: int = 250) -> bytes:
    return _big_list_then_calls(global_("builtins", "tuple"), items, calls)


def set_copies(items: int = 1_000_000, calls: int = 250) -> bytes:
    return _big_list_then_calls(global_("builtins", "set"), items, calls)


def exception_group_copies(items: int = 100_000, calls: int = 250) -> bytes:
    """ExceptionGroup copies its list of exceptions into a tuple, every time."""
    return b"".join(
        [
            PROTO4,
            global_("builtins", "ExceptionGroup"),
            MEMOIZE,
            global_("builtins", "ValueError"),
            MEMOIZE,
            b"(",
            (binget(1) + b")R") * items,
            b"l",
            MEMOIZE,
            b"0",
            b"](",
            (binget(0) + b"\x8c\x01x" + binget(2) + b"\x86R") * calls,
            b"e",
            STOP,
        ]
    )


def bytearray_copies(size: int = 1 << 20, calls: int = 250) -> bytes:
    """``builtins.bytearray`` on one memoized MiB of bytes, 250 times."""
    return b"".join(
        [
            PROTO4,
            global_("builtins", "bytearray"),
            MEMOIZE,
            b"B" + struct.pack("<I", size) + b"\x00" * size,
            MEMOIZE,
            b"0](",
            (binget(0) + binget(1) + b"\x85R") * calls,
            b"e",
            STOP,
        ]
    )


def shared_build_state(keys: int = 100_000, objects: int = 250) -> bytes:
    """One memoized dict of 100,000 attributes set on 250 exceptions by BUILD."""
    state = pickle.dumps({f"a{i}": None for i in range(keys)}, 4)[2:-1]  # no PROTO, no STOP
    if state[:1] == b"\x95":
        state = state[9:]
    # The class is memoized first (index 0), then the dict (1) and its keys.
    return b"".join(
        [
            PROTO4,
            global_("builtins", "ValueError"),
            MEMOIZE,
            state,
            b"0",
            b"](",
            (binget(0) + b")R" + binget(1) + b"b") * objects,
            b"e",
            STOP,
        ]
    )


def deep_lists(depth: int = 100_000) -> bytes:
    """Lists nested 100,000 deep (repr, orjson and to_json recurse on them)."""
    return PROTO4 + b"]" * depth + b"a" * (depth - 1) + STOP


def deep_dicts(depth: int = 100_000) -> bytes:
    """Dicts nested 100,000 deep: ``{None: {None: ...}}``."""
    return PROTO4 + b"}N" * (depth - 1) + b"}" + b"s" * (depth - 1) + STOP


def deep_frozensets(depth: int = 100_000) -> bytes:
    """Frozensets nested 100,000 deep."""
    return PROTO4 + b"(" * depth + b"\x91" * depth + STOP


def deep_tuples(depth: int = 100_000) -> bytes:
    """Tuples nested 100,000 deep, not hashed."""
    return PROTO4 + b"N" + b"\x85" * depth + STOP


def wide_sharing(width: int = 1000, levels: int = 3) -> bytes:
    """A list of 1,000 references to a list of 1,000 references ... (10**9 nodes as JSON)."""
    out = [PROTO4, b"N", MEMOIZE]
    for level in range(1, levels + 1):
        out += [b"](", binget(level - 1) * width, b"e", MEMOIZE]
    return b"".join(out) + STOP


def huge_memo_index() -> bytes:
    """LONG_BINPUT at index 2**27: the unpickler would allocate a 2 GiB memo."""
    return PROTO4 + b"N" + b"r" + struct.pack("<I", 1 << 27) + STOP


def decimal_of_huge_int(bits: int = 4_000_000) -> bytes:
    """``Decimal`` of a 4-million-bit integer: quadratic, about 20 s."""
    number = 1 << bits
    raw = number.to_bytes(bits // 8 + 1, "little", signed=True)
    return (
        PROTO4
        + global_("decimal", "Decimal")
        + b"\x8b"
        + struct.pack("<i", len(raw))
        + raw
        + b"\x85R"
        + STOP
    )


def fraction_of_huge_ints(bits: int = 1_000_000) -> bytes:
    """``Fraction`` of two million-bit integers: their gcd takes about a second."""
    a = (1 << bits) - 12345
    b = (1 << bits) - 67891
    parts = []
    for number in (a, b):
        raw = number.to_bytes(bits // 8 + 1, "little", signed=True)
        parts.append(b"\x8b" + struct.pack("<i", len(raw)) + raw)
    return PROTO4 + global_("fractions", "Fraction") + parts[0] + parts[1] + b"\x86R" + STOP


def build_on_a_class() -> bytes:
    """BUILD with slot state on ``uuid.UUID`` itself: would change the class for every load."""
    return PROTO4 + global_("uuid", "UUID") + b"N}\x8c\x03tag\x8c\x01xs\x86b" + STOP


def ordered_dict_reconstructor() -> bytes:
    """``copyreg._reconstructor(OrderedDict, dict, {'a': 1})``: comes back empty if allowed."""
    return (
        b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\ndict\n"
        b"(dp0\nS'a'\nI1\nstR."
    )


#: The attacks of issue 12 and their siblings, by name.
BOMBS: dict[str, Callable[[], bytes]] = {
    "deep-tuples-in-a-set": deep_tuples_in_a_set,
    "shared-tuples-in-a-set": shared_tuples_in_a_set,
    "shared-tuples-as-a-dict-key": shared_tuples_as_a_dict_key,
    "shared-tuples-in-a-frozenset": shared_tuples_in_a_frozenset,
    "shared-tuples-through-set": shared_tuples_through_set,
    "list-copies": list_copies,
    "tuple-copies": tuple_copies,
    "set-copies": set_copies,
    "exception-group-copies": exception_group_copies,
    "bytearray-copies": bytearray_copies,
    "shared-build-state": shared_build_state,
    "deep-lists": deep_lists,
    "deep-dicts": deep_dicts,
    "deep-frozensets": deep_frozensets,
    "deep-tuples": deep_tuples,
    "wide-sharing": wide_sharing,
    "huge-memo-index": huge_memo_index,
    "decimal-of-huge-int": decimal_of_huge_int,
    "fraction-of-huge-ints": fraction_of_huge_ints,
    "build-on-a-class": build_on_a_class,
    "ordered-dict-reconstructor": ordered_dict_reconstructor,
}


#: The attacks of issue 12 at full size, their siblings smaller (still far over
#: every limit): what the gateway test serves, in turn and at once, while it
#: measures how long the gateway takes to answer others.
GATEWAY_BOMBS: dict[str, Callable[[], bytes]] = {
    **BOMBS,
    "tuple-copies": lambda: tuple_copies(items=50_000),
    "set-copies": lambda: set_copies(items=50_000),
    "exception-group-copies": lambda: exception_group_copies(items=5_000),
    "shared-build-state": lambda: shared_build_state(keys=5_000),
    "deep-lists": lambda: deep_lists(5_000),
    "deep-dicts": lambda: deep_dicts(5_000),
    "deep-frozensets": lambda: deep_frozensets(5_000),
    "deep-tuples": lambda: deep_tuples(5_000),
}
