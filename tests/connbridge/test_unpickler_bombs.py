"""Pickle bombs: each is refused before it costs more than its size allows.

The bombs (``pickle_bombs.py``) are the attacks of issue 12 and their
siblings. Each is loaded in a child process with its address space limited
to 1 GiB and a deadline of 60 s: it must print the refusal, not crash, hang
or run out of memory. Property tests check the other side: what ``pickle``
writes for allowed values still loads, and a pickle the limit check calls
malformed is one the unpickler fails on too.
"""

from __future__ import annotations

import collections
import copyreg
import datetime as dt
import decimal
import fractions
import io
import json
import math
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pickle_bombs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pickle_bombs import BOMBS, binget, ordered_dict_reconstructor

from connbridge import unpickler
from connbridge.errors import PickleError, PickleLimitExceeded, RefusedGlobal
from connbridge.pickle_limits import PickleLimits, check
from connbridge.unpickler import loads, make_loads

HERE = Path(__file__).resolve().parent

#: What refuses each bomb: the limit check (by the limit's name) or a guard (by message).
EXPECTED: dict[str, tuple[str, ...] | str] = {
    "deep-tuples-in-a-set": ("max_depth",),
    "shared-tuples-in-a-set": ("max_hashed_nodes",),
    "shared-tuples-as-a-dict-key": ("max_hashed_nodes",),
    "shared-tuples-in-a-frozenset": ("max_hashed_nodes",),
    "shared-tuples-through-set": ("work_per_byte", "max_nodes"),
    "list-copies": ("work_per_byte",),
    "tuple-copies": ("work_per_byte",),
    "set-copies": ("work_per_byte",),
    "exception-group-copies": ("work_per_byte",),
    "bytearray-copies": ("work_per_byte",),
    "shared-build-state": ("work_per_byte",),
    "deep-lists": ("max_depth",),
    "deep-dicts": ("max_depth",),
    "deep-frozensets": ("max_depth",),
    "deep-tuples": ("max_depth",),
    "wide-sharing": ("max_nodes",),
    "huge-memo-index": ("memo",),
    "build-on-a-class": ("globals",),
    "decimal-of-huge-int": "decimal.Decimal.*bit integer",
    "fraction-of-huge-ints": "fractions.Fraction.*bit integer",
    "ordered-dict-reconstructor": "cannot rebuild",
}


def test_every_bomb_has_an_expectation() -> None:
    assert set(EXPECTED) == set(BOMBS)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused(name: str) -> None:
    data = BOMBS[name]()
    expected = EXPECTED[name]
    if isinstance(expected, tuple):
        with pytest.raises(PickleLimitExceeded) as checked:
            check(data, PickleLimits())  # refused before anything is loaded
        assert checked.value.limit in expected, checked.value
        with pytest.raises(PickleLimitExceeded) as loaded:
            loads(data)
    else:
        assert check(data, PickleLimits()) is None  # a guard refuses it, while loading
        with pytest.raises(PickleError, match=expected) as loaded:
            loads(data)
        assert not isinstance(loaded.value, PickleLimitExceeded | RefusedGlobal)
    assert len(str(loaded.value)) <= 300


_CHILD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
sys.path.insert(0, sys.argv[1])
from pickle_bombs import BOMBS
from connbridge.errors import PickleError
from connbridge.unpickler import loads
data = BOMBS[sys.argv[2]]()
try:
    loads(data)
except PickleError as exc:
    # VmHWM, not ru_maxrss: that one keeps the parent's peak across exec.
    status = open("/proc/self/status").read()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    print(type(exc).__name__, peak)
else:
    print("loaded")
"""


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_costs_little_in_a_child_process(name: str) -> None:
    # A child with 1 GiB of address space and 60 s: a segfault, a hang or a
    # MemoryError would show as a missing or different line.
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(HERE), name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kind, peak_kib = result.stdout.split()
    assert kind in {"PickleLimitExceeded", "PickleError"}
    # The child's peak RSS: the interpreter, the bomb itself and the walk.
    assert int(peak_kib) < 200 * 1024, f"peak RSS {peak_kib} KiB"


def test_the_reconstructor_control_really_loses_the_items() -> None:
    # Control: copyreg's own _reconstructor returns an empty OrderedDict.
    od = copyreg._reconstructor(collections.OrderedDict, dict, {"a": 1})  # type: ignore[attr-defined]
    assert list(od) == []
    with pytest.raises(PickleError, match="cannot rebuild"):
        loads(ordered_dict_reconstructor())


# -- the limits are settable, and the edges are where they say ---------------------


def nested_lists(depth: int) -> bytes:
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


def shared_tuple_key(levels: int) -> bytes:
    out = [b"\x80\x04)\x94"]
    for level in range(1, levels + 1):
        out += [binget(level - 1), binget(level - 1), b"\x86\x94"]
    return b"".join(out) + b"\x8f(" + binget(levels) + b"\x90."


def test_max_depth_edge() -> None:
    load = make_loads(max_depth=10)
    value = load(nested_lists(10))
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    assert depth == 9  # ten lists: nine of them hold another
    with pytest.raises(PickleLimitExceeded, match="deeper than 10") as info:
        load(nested_lists(11))
    assert info.value.limit == "max_depth"
    assert len(loads(nested_lists(256))) == 1  # the default, the gateway's max_depth
    with pytest.raises(PickleLimitExceeded, match="max_depth"):
        loads(nested_lists(257))


def test_max_hashed_nodes_edge() -> None:
    # Level n of shared tuples expands to 2**(n+1) - 1 nodes.
    load = make_loads(max_hashed_nodes=2**11 - 1)
    assert len(load(shared_tuple_key(10))) == 1  # type: ignore[arg-type]
    with pytest.raises(PickleLimitExceeded, match="max_hashed_nodes"):
        load(shared_tuple_key(11))
    assert len(loads(shared_tuple_key(15))) == 1  # type: ignore[arg-type]


def test_work_per_byte_and_max_nodes_are_settable() -> None:
    small = pickle.dumps([list(range(10))] * 3, 4)
    assert make_loads(work_per_byte=1, max_nodes=1)(small) == [list(range(10))] * 3
    # list() on one 1,000-item list 250 times: 250,000 items copied by 3.5 kB.
    data = pickle_bombs.list_copies(items=1000, calls=250)
    assert len(data) < 4000
    assert len(loads(data)) == 250  # type: ignore[arg-type]  # within the default allowance
    with pytest.raises(PickleLimitExceeded, match="work_per_byte") as info:
        make_loads(max_nodes=1000)(data)
    assert info.value.limit == "work_per_byte"
    # With more work allowed, the result is still 250,000 nodes: over max_nodes.
    with pytest.raises(PickleLimitExceeded, match="max_nodes") as info:
        make_loads(max_nodes=1000, work_per_byte=100)(data)
    assert info.value.limit == "max_nodes"
    wide = BOMBS["wide-sharing"]()
    with pytest.raises(PickleLimitExceeded, match="max_nodes"):
        loads(wide)
    with pytest.raises(PickleLimitExceeded, match="max_nodes"):
        make_loads(max_nodes=10**6)(pickle.dumps([[None] * 1000] * 1010, 4))
    assert len(make_loads(max_nodes=10**6)(pickle.dumps([[None] * 1000] * 990, 4))) == 990  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", ["max_depth", "max_hashed_nodes", "max_nodes", "work_per_byte"])
def test_limits_must_be_positive_integers(limit: str) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=limit):
            make_loads(**{limit: bad})


def test_a_container_filled_after_it_was_shared_is_recounted() -> None:
    # a = [] (memo 0); outer = [a] * 1000 (memo 1); then 2,000 items go into
    # a through the memo: outer expands to 2 million nodes, which only the
    # recount sees (when outer was built, a was empty).
    data = b"".join(
        [
            b"\x80\x04]\x94",
            b"](" + binget(0) * 1000 + b"e\x94",
            binget(0) + b"(" + b"N" * 2000 + b"e0",
            b"0" + binget(1) + b".",
        ]
    )
    with pytest.raises(PickleLimitExceeded, match="max_nodes"):
        loads(data)
    value = make_loads(max_nodes=3 * 10**6)(data)
    assert isinstance(value, list) and len(value) == 1000 and len(value[0]) == 2000


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cycles_still_load(protocol: int) -> None:
    # Cycles are built by changing a container after it was shared: the
    # recount counts a reference back to an enclosing container as one node.
    x: list[Any] = []
    x.extend([x] * 300)
    d: dict[str, Any] = {}
    d["self"] = [d, d]
    loaded = loads(pickle.dumps([x, d], protocol))
    assert isinstance(loaded, list)
    assert all(item is loaded[0] for item in loaded[0])
    assert loaded[1]["self"][0] is loaded[1]


def test_numbers_up_to_the_bound_still_load() -> None:
    big = (1 << 16_000) + 1
    assert loads(pickle.dumps(fractions.Fraction(big, 3))) == fractions.Fraction(big, 3)
    assert loads(pickle.dumps(decimal.Decimal(big))) == decimal.Decimal(big)  # as text
    assert loads(pickle.dumps(big)) == big  # plain integers are not bounded here
    with pytest.raises(PickleError, match="16384 bits"):
        loads(pickle.dumps(fractions.Fraction(1, 1 << 17_000)))


# -- properties ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**60, max_value=2**600),
    st.floats(allow_nan=False),
    st.text(max_size=80),
    st.binary(max_size=80),
    st.complex_numbers(allow_nan=False),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.datetimes(),
    st.dates(),
    st.timedeltas(),
    st.uuids(),
)
hashables = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4), max_leaves=8
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: [items, items]),  # shared
        st.dictionaries(st.text(max_size=5), inner, max_size=4).map(collections.OrderedDict),
        st.lists(inner, max_size=3).map(lambda args: ValueError(*args)),
    )


values = st.recursive(scalars | hashables, _containers, max_leaves=40)


def same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, BaseException):
        assert isinstance(b, BaseException)
        return same(list(a.args), list(b.args))
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, decimal.Decimal):
        assert isinstance(b, decimal.Decimal)
        return a.compare_total(b) == 0
    if isinstance(a, float):
        assert isinstance(b, float)
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    return a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_what_pickle_writes_for_allowed_values_loads(value: object, protocol: int) -> None:
    data = pickle.dumps(value, protocol)
    assert check(data, PickleLimits()) is None
    assert same(loads(data), value)


def unchecked_load(data: bytes) -> object:
    """The allowlist unpickler without the limit check (the pickles here are small)."""
    loader = unpickler._AllowlistUnpickler(io.BytesIO(data))
    loader._table = _TABLE
    return loader.load()


_TABLE = unpickler._build_table((), {})


def fails(data: bytes) -> bool:
    try:
        unchecked_load(data)
    except Exception:
        return True
    return False


_SEEDS = [
    pickle.dumps(value, protocol)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1)
    for value in (
        [1, "two", (3, 4), {"k": [None, True]}, {5, 6}, frozenset({7}), b"x" * 70],
        {"a": [1.5, -2, 2**70], ("t", 1): {"n": {}}},
        [[]] * 3,
    )
]


@settings(max_examples=1000, deadline=None)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
)
def test_a_pickle_called_malformed_fails_in_the_unpickler_too(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed[: max(1, cut)] if cut < len(seed) else seed)
    for where, byte in edits:
        data[where % len(data)] = byte
    mutated = bytes(data)
    try:
        stop = check(mutated, PickleLimits(max_nodes=10_000))
    except PickleError:
        return  # refused (over a limit, or frames it cannot read alike): nothing is loaded
    if stop is not None:
        # The check saw the unpickler fail at ``stop``: it must, on the whole
        # pickle and on the part up to there.
        assert fails(mutated), mutated
        assert fails(mutated[:stop]), mutated
    else:
        fails(mutated)  # within the limits: loads or fails, cheaply


def test_allowed_values_of_every_kind_pass_the_check() -> None:
    value = [
        dt.datetime(2020, 1, 2, tzinfo=dt.UTC),
        uuid.UUID(int=1),
        decimal.Decimal("1.5"),
        collections.OrderedDict(a=1),
        ValueError("x", 1),
        json.loads('{"a": [1, {"b": null}]}'),
    ]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert check(pickle.dumps(value, protocol), PickleLimits()) is None


def test_an_opcode_across_the_end_of_a_frame_is_refused() -> None:
    # The unpickler reads an opcode that does not fit in the rest of its
    # frame from after the frame, dropping the rest: this walk would have
    # checked other opcodes than the ones that run.
    honest = pickle.dumps([1.5, "x" * 10], 4)
    assert honest[2:3] == b"\x95"  # PROTO 4, then FRAME
    length = int.from_bytes(honest[3:11], "little")
    assert loads(honest) == [1.5, "x" * 10]
    assert length == 27
    for shorter in (5, 16):  # inside the float, inside the string
        data = honest[:3] + shorter.to_bytes(8, "little") + honest[11:]
        with pytest.raises(PickleError, match="frame") as info:
            check(data, PickleLimits())
        assert not isinstance(info.value, PickleLimitExceeded)
        # (A pickle this short with no sharing opcode skips the walk: it
        # cannot cost more than its size, and the unpickler refuses it.)
        with pytest.raises(PickleError):
            loads(data)
        with pytest.raises(PickleError, match="frame"):
            loads(data + b"N" * 300)  # long enough to be walked
    # A frame that ends on an opcode boundary is read alike: it loads.
    assert loads(honest[:3] + (1).to_bytes(8, "little") + honest[11:]) == [1.5, "x" * 10]


def test_readonly_buffer_is_refused() -> None:
    # In-band data never uses it; on a bytearray, CPython 3.11's unpickler
    # frees the bytearray while a view of it still exists.
    data = b"\x80\x05\x96" + (3).to_bytes(8, "little") + b"abc\x98."
    with pytest.raises(PickleError, match="READONLY_BUFFER"):
        loads(data)


def test_a_truncated_bytearray_is_a_clean_error() -> None:
    # The unpickler itself would print "SystemError: deallocated bytearray
    # object has exported buffers" for it (run in a child to see stderr).
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from connbridge.unpickler import loads\n"
        "from connbridge.errors import PickleError\n"
        "data = b'\\x80\\x05\\x96' + (1 << 20).to_bytes(8, 'little') + b'abc'\n"
        "try:\n    loads(data)\nexcept PickleError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(HERE)], capture_output=True, text=True, timeout=60
    )
    assert "ended early" in result.stdout, result
    assert "SystemError" not in result.stderr, result.stderr


def test_a_short_pickle_that_shares_through_dup_is_still_walked() -> None:
    # 86 bytes: short enough for the fast path, but DUP shares each level
    # with the next, so hashing the frozenset's one member would visit 2**40 nodes.
    data = b"\x80\x04()" + b"2\x86" * 40 + b"\x91."
    assert len(data) < 256
    with pytest.raises(PickleLimitExceeded):
        loads(data)
