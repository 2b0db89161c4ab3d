"""The allowlist unpickler: what loads, what is refused, and that refused code never runs."""

from __future__ import annotations

import binascii
import collections
import copyreg
import datetime as dt
import decimal
import fractions
import json
import os
import pickle
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from connbridge import unpickler
from connbridge.errors import PickleError, RefusedGlobal
from connbridge.unpickler import DEFAULT_ALLOWLIST, loads, make_dumps, make_loads, resolve_entry

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
PYTHON27 = PYENV_VERSIONS / "2.7.18" / "bin" / "python"

TZ = dt.timezone(dt.timedelta(hours=-3, minutes=-30), "NST")

ALLOWED_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**200,
    -(2**200),
    1.5,
    float("inf"),
    -0.0,
    "",
    "héllo \U0001f600",
    b"",
    b"\x00\xff" * 10,
    bytearray(),
    bytearray(b"\x00\x80abc"),
    complex(1.5, -2),
    (),
    (1, (2, "x")),
    [],
    [1, [2, [3]]],
    {},
    {"a": 1, 2: [3], (4, 5): None},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({frozenset({1}), b"x"}),
    dt.date(2024, 2, 29),
    dt.time(23, 59, 59, 999999),
    dt.time(1, 2, tzinfo=TZ),
    dt.datetime(2001, 2, 3, 4, 5, 6, 7),
    dt.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
    dt.datetime(1, 1, 1, tzinfo=TZ),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    dt.timedelta.max,
    dt.UTC,
    TZ,
    decimal.Decimal("1.10"),
    decimal.Decimal("-0"),
    decimal.Decimal("1E+999999"),
    decimal.Decimal("NaN123"),
    decimal.Decimal("-Infinity"),
    fractions.Fraction(-7, 3),
    fractions.Fraction(2**100, 3),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    uuid.uuid1(),
    collections.OrderedDict([("b", 1), ("a", 2)]),
]

EXCEPTIONS: list[BaseException] = [
    ValueError("bad value", 42),
    KeyError("k"),
    OSError(2, "No such file", "/nonexistent"),
    FileNotFoundError(2, "gone"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    StopIteration(5),
    SystemExit(3),
    KeyboardInterrupt(),
    GeneratorExit(),
    ExceptionGroup("several", [ValueError(1), TypeError(2)]),
    Exception(),
]


def same(a: object, b: object) -> bool:
    """Equal and of the same type, with NaN equal to NaN and exceptions compared by args."""
    if type(a) is not type(b):
        return False
    if isinstance(a, BaseException):
        assert isinstance(b, BaseException)
        return len(a.args) == len(b.args) and all(map(same, a.args, b.args))
    if isinstance(a, decimal.Decimal):
        assert isinstance(b, decimal.Decimal)
        return a.compare_total(b) == 0
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dt.datetime | dt.time):
        assert isinstance(b, dt.datetime | dt.time)
        return a == b and a.utcoffset() == b.utcoffset()
    return a == b


def reduce_pickle(module: str, name: str, args: tuple[Any, ...], protocol: int) -> bytes:
    """A pickle that calls ``module.name(*args)``, whatever ``module.name`` is."""
    body = pickle.dumps(args, protocol)
    if protocol >= 2:
        body = body[2:]  # PROTO
    if body[:1] == pickle.FRAME:
        body = body[9:]
    assert body.endswith(pickle.STOP)
    body = body[:-1]
    head = pickle.PROTO + bytes([protocol]) if protocol >= 2 else b""
    if protocol >= 4:
        ref = b"".join(
            pickle.SHORT_BINUNICODE + bytes([len(part)]) + part.encode() for part in (module, name)
        )
        ref += pickle.STACK_GLOBAL
    else:
        ref = pickle.GLOBAL + f"{module}\n{name}\n".encode()
    return head + ref + body + pickle.REDUCE + pickle.STOP


class Reduces:
    """Pickles as ``func(*args)``: how a hostile backend would make a payload."""

    def __init__(self, func: object, *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


# -- what the allowlist holds ------------------------------------------------------


def test_exports() -> None:
    defined = {
        name
        for name, obj in vars(unpickler).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == unpickler.__name__
    }
    assert defined | {"DEFAULT_ALLOWLIST", "MAX_NUMBER_BITS"} == set(unpickler.__all__)


def test_default_allowlist_resolves_and_holds_no_code_runners() -> None:
    for entry in DEFAULT_ALLOWLIST:
        resolve_entry(entry)
    names = {entry.partition(":")[2] for entry in DEFAULT_ALLOWLIST}
    dangerous = {"eval", "exec", "getattr", "setattr", "__import__", "open", "compile"}
    assert not names & dangerous
    # Left out on purpose: int(Decimal("1e999999999")) and str(b, codec).
    assert not {"builtins:int", "builtins:str", "builtins:float"} & DEFAULT_ALLOWLIST
    assert {"builtins:ValueError", "builtins:SystemExit", "builtins:IOError"} <= DEFAULT_ALLOWLIST


# -- every allowed value, every protocol -------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_allowed_values_round_trip(protocol: int) -> None:
    dumps = make_dumps(protocol)
    for value in ALLOWED_VALUES:
        loaded = loads(dumps(value))
        assert same(loaded, value), (protocol, value, loaded)


@pytest.mark.parametrize("protocol", [4, 5])
def test_fold_survives(protocol: int) -> None:
    # datetime only records fold at protocol 4 and above.
    for value in (dt.datetime(2021, 11, 7, 1, 30, fold=1), dt.time(1, 30, fold=1)):
        loaded = loads(pickle.dumps(value, protocol))
        assert isinstance(loaded, dt.datetime | dt.time) and loaded.fold == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exceptions_round_trip(protocol: int) -> None:
    for exc in EXCEPTIONS:
        loaded = loads(pickle.dumps(exc, protocol))
        assert same(loaded, exc), (protocol, exc, loaded)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exception_attributes_survive(protocol: int) -> None:
    exc = OSError(2, "No such file", "/nonexistent")
    exc.add_note("while reading")
    loaded = loads(pickle.dumps(exc, protocol))
    assert isinstance(loaded, FileNotFoundError)
    assert loaded.filename == "/nonexistent"
    assert loaded.__notes__ == ["while reading"]


def test_shared_and_cyclic_structures_load() -> None:
    shared = [1, 2]
    loaded = loads(pickle.dumps([shared, shared]))
    assert isinstance(loaded, list) and loaded[0] is loaded[1]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    loaded = loads(pickle.dumps(cyclic))
    assert isinstance(loaded, list) and loaded[0] is loaded


def test_python2_names_are_mapped() -> None:
    assert loads(b"c__builtin__\nset\n((lp0\nI1\naI2\natp1\nRp2\n.") == {1, 2}
    got = loads(b"cexceptions\nStandardError\n(S'x'\ntR.")
    assert type(got) is Exception and got.args == ("x",)
    # copy_reg._reconstructor, as Python 2 writes a UUID at protocol 0.
    data = pickle.dumps(uuid.UUID(int=7), 0)
    assert b"copy_reg\n_reconstructor" in data
    assert loads(data) == uuid.UUID(int=7)


# -- pickles made by other interpreters --------------------------------------------

_MAKE_PICKLES = r"""
import binascii, collections, datetime, decimal, fractions, json, pickle, sys, uuid
values = {
    "str": "abc",
    "unicode": u"caf\xe9 \u20ac",
    "int": 7,
    "long": 2 ** 70,
    "float": 1.5,
    "tuple": (1, ("a",)),
    "list": [1, [2.5]],
    "dict": {"k": [1]},
    "set": set([1, 2]),
    "frozenset": frozenset([3]),
    "complex": 1 + 2j,
    "bytearray": bytearray(b"a\x00\xff"),
    "datetime": datetime.datetime(2020, 1, 2, 3, 4, 5, 6),
    "date": datetime.date(1999, 12, 31),
    "time": datetime.time(13, 14, 15, 16),
    "timedelta": datetime.timedelta(1, 2, 3),
    "decimal": decimal.Decimal("1.10"),
    "fraction": fractions.Fraction(-1, 3),
    "uuid": uuid.UUID(int=5),
    "ordereddict": collections.OrderedDict([("b", 1), ("a", 2)]),
    "valueerror": ValueError("bad", 1),
    "keyerror": KeyError("k"),
}
if sys.version_info[0] >= 3:
    values["bytes"] = b"\x00\xff"
    values["aware"] = datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc)
out = {}
for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
    for name, value in values.items():
        data = pickle.dumps(value, protocol)
        out["%s/%d" % (name, protocol)] = binascii.hexlify(data).decode("ascii")
sys.stdout.write(json.dumps(out))
"""

EXPECTED_FROM_ELSEWHERE: dict[str, object] = {
    "str": "abc",
    "unicode": "café €",
    "int": 7,
    "long": 2**70,
    "float": 1.5,
    "tuple": (1, ("a",)),
    "list": [1, [2.5]],
    "dict": {"k": [1]},
    "set": {1, 2},
    "frozenset": frozenset({3}),
    "complex": 1 + 2j,
    "bytearray": bytearray(b"a\x00\xff"),
    "datetime": dt.datetime(2020, 1, 2, 3, 4, 5, 6),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(13, 14, 15, 16),
    "timedelta": dt.timedelta(1, 2, 3),
    "decimal": decimal.Decimal("1.10"),
    "fraction": fractions.Fraction(-1, 3),
    "uuid": uuid.UUID(int=5),
    "ordereddict": collections.OrderedDict([("b", 1), ("a", 2)]),
    "valueerror": ValueError("bad", 1),
    "keyerror": KeyError("k"),
    "bytes": b"\x00\xff",
    "aware": dt.datetime(2020, 1, 2, tzinfo=dt.UTC),
}


def pickles_from(python: str) -> dict[str, bytes]:
    result = subprocess.run(
        [python, "-c", _MAKE_PICKLES], capture_output=True, text=True, timeout=60, check=True
    )
    return {key: binascii.unhexlify(value) for key, value in json.loads(result.stdout).items()}


def test_pickles_from_every_interpreter(interpreter: Any) -> None:
    # ``interpreter`` (tests/conftest.py): each installed Python, 2.7 and 3.6-3.13.
    pickles = pickles_from(interpreter.path)
    # Python 2 keeps datetime state in a byte string: it needs latin1 (module docstring).
    load = make_loads(encoding="latin1") if interpreter.version < (3, 0) else loads
    assert len(pickles) >= 22 * 3
    for key, data in pickles.items():
        name = key.partition("/")[0]
        assert same(load(data), EXPECTED_FROM_ELSEWHERE[name]), key


@pytest.fixture(scope="module")
def py2_pickles() -> dict[str, bytes]:
    if not PYTHON27.exists():
        pytest.skip(f"Python 2.7 is not installed at {PYTHON27}")
    return pickles_from(str(PYTHON27))


@pytest.mark.interop
@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_python2_datetime_needs_latin1_or_bytes(
    py2_pickles: dict[str, bytes], protocol: int
) -> None:
    data = py2_pickles[f"datetime/{protocol}"]
    with pytest.raises(PickleError, match="latin1") as info:
        loads(data)  # utf-8: the packed state is not text
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    expected = EXPECTED_FROM_ELSEWHERE["datetime"]
    assert make_loads(encoding="latin1")(data) == expected
    assert make_loads(encoding="bytes")(data) == expected


@pytest.mark.interop
@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_python2_text_under_each_encoding(py2_pickles: dict[str, bytes], protocol: int) -> None:
    data = py2_pickles[f"str/{protocol}"]
    assert loads(data) == "abc"
    assert make_loads(encoding="bytes")(data) == b"abc"
    # unicode objects are text whatever the encoding.
    assert make_loads(encoding="bytes")(py2_pickles[f"unicode/{protocol}"]) == "café €"
    assert loads(py2_pickles[f"long/{protocol}"]) == 2**70
    exc = loads(py2_pickles[f"valueerror/{protocol}"])
    assert type(exc) is ValueError and exc.args == ("bad", 1)


# -- hostile pickles ----------------------------------------------------------------

HOSTILE_GLOBALS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("__builtin__", "eval"),
    ("subprocess", "Popen"),
    ("io", "open"),
    ("builtins", "int"),
    ("uuid", "os"),  # a module attribute, not a class
    ("collections", "OrderedDict.fromkeys"),  # dotted: no attribute walking
    ("datetime", "datetime.__init__.__globals__"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("module", "name"), HOSTILE_GLOBALS)
def test_hostile_globals_are_refused_by_name(module: str, name: str, protocol: int) -> None:
    data = reduce_pickle(module, name, ("echo pwned",), protocol)
    with pytest.raises(RefusedGlobal) as info:
        loads(data)
    assert (info.value.module, info.value.name) == (module, name)
    assert f"{module}.{name}" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_callables_are_refused(protocol: int) -> None:
    for func in (os.system, eval, getattr, subprocess.Popen, os.remove):
        data = pickle.dumps(Reduces(func, "x"), protocol)
        with pytest.raises(RefusedGlobal, match=func.__name__):
            loads(data)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_reduce_never_creates_the_file(tmp_path: Path, protocol: int) -> None:
    # Control: the stdlib unpickler really would create it.
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(Reduces(open, str(control), "w"), protocol)).close()
    assert control.exists()

    target = tmp_path / "pwned.txt"
    data = pickle.dumps(Reduces(open, str(target), "w"), protocol)
    with pytest.raises(RefusedGlobal) as info:
        loads(data)
    assert "io.open" in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["bytearray", "bytes"])
def test_size_arguments_are_refused_quickly(kind: str, protocol: int) -> None:
    # Control: the same call shape with a small size allocates that many bytes.
    small = reduce_pickle("builtins", kind, (1000,), protocol)
    assert pickle.loads(small) == bytes(1000)

    data = reduce_pickle("builtins", kind, (10**12,), protocol)
    started = time.monotonic()
    with pytest.raises(PickleError, match=f"builtins.{kind}.*integer"):
        loads(data)
    assert time.monotonic() - started < 1.0
    with pytest.raises(PickleError, match="integer"):
        loads(reduce_pickle("__builtin__", kind, (True,), protocol))


def test_extras_cannot_unguard_a_guarded_entry() -> None:
    load = make_loads(["builtins:bytearray"])
    with pytest.raises(PickleError, match="integer"):
        load(reduce_pickle("builtins", "bytearray", (10**12,), 4))


def test_bytes_guard_accepts_what_picklers_write() -> None:
    assert loads(reduce_pickle("builtins", "bytearray", ("\xff", "latin-1"), 2)) == b"\xff"
    assert loads(reduce_pickle("builtins", "bytes", (b"ab",), 4)) == b"ab"
    with pytest.raises(PickleError, match="latin-1"):
        loads(reduce_pickle("builtins", "bytearray", ("x", "utf-16"), 2))
    with pytest.raises(PickleError, match="latin-1"):
        loads(reduce_pickle("builtins", "bytes", ([1, 2],), 2))


def test_codecs_encode_only_latin1() -> None:
    assert loads(reduce_pickle("_codecs", "encode", ("\xe9", "latin1"), 2)) == b"\xe9"
    for encoding in ("rot13", "utf-8", "idna", "zlib"):
        with pytest.raises(PickleError, match="latin-1"):
            loads(reduce_pickle("_codecs", "encode", ("x", encoding), 2))
    with pytest.raises(PickleError, match="latin-1"):
        loads(reduce_pickle("_codecs", "encode", (b"x", "latin1"), 2))


def test_fraction_exponent_text_is_refused_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(PickleError, match="Fraction"):
        loads(reduce_pickle("fractions", "Fraction", ("1e999999999",), 2))
    with pytest.raises(PickleError, match="Fraction"):
        loads(reduce_pickle("fractions", "Fraction", (decimal.Decimal("1e999999999"),), 2))
    assert time.monotonic() - started < 1.0
    # The forms real picklers write still load: (n, d) ints and "n/d" text.
    assert loads(reduce_pickle("fractions", "Fraction", ("-2/6",), 2)) == fractions.Fraction(-1, 3)
    assert loads(reduce_pickle("fractions", "Fraction", (5, 10), 4)) == fractions.Fraction(1, 2)
    with pytest.raises(PickleError, match="ZeroDivisionError"):
        loads(reduce_pickle("fractions", "Fraction", (1, 0), 4))


def reconstructor_pickle(cls: str, base: str, state: str) -> bytes:
    """Protocol 0: ``copy_reg._reconstructor(cls, base, state)``."""
    return f"ccopy_reg\n_reconstructor\n(c{cls}\nc{base}\n{state}tR.".encode()


def test_reconstructor_is_limited_to_the_allowlist() -> None:
    ok = reconstructor_pickle("uuid\nUUID", "__builtin__\nobject", "N")
    assert type(loads(ok)) is uuid.UUID
    # A class from the table, but a base that would allocate from its state.
    with pytest.raises(PickleError, match="_reconstructor"):
        loads(reconstructor_pickle("uuid\nUUID", "__builtin__\nbytearray", "I1000\n"))
    # A base that is not a base of the class.
    with pytest.raises(PickleError, match="_reconstructor"):
        loads(reconstructor_pickle("uuid\nUUID", "__builtin__\nlist", "N"))
    # A class outside the table never gets that far.
    with pytest.raises(RefusedGlobal, match=r"threading\.Thread"):
        loads(reconstructor_pickle("threading\nThread", "__builtin__\nobject", "N"))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"P1\n.", id="PERSID"),
        pytest.param(b"\x80\x02K\x01Q.", id="BINPERSID"),
    ],
)
def test_persistent_ids_are_refused(data: bytes) -> None:
    with pytest.raises(PickleError, match="persistent ID"):
        loads(data)


@pytest.mark.parametrize("protocol", [2, 4])
def test_extension_codes_are_refused_even_when_cached(protocol: int) -> None:
    code = 0x7FFFFFF0
    copyreg.add_extension("posix", "system", code)
    try:
        data = pickle.dumps(os.system, protocol)
        assert pickle.EXT4 in data
        with pytest.raises(PickleError, match="extension"):
            loads(data)
        # The stdlib unpickler fills copyreg's cache, which the C unpickler
        # reads before it asks find_class.
        assert pickle.loads(data) is os.system
        with pytest.raises(PickleError, match="extension"):
            loads(data)
    finally:
        copyreg.remove_extension("posix", "system", code)
    with pytest.raises(PickleError, match="extension code"):
        loads(data)  # unregistered now


# -- broken pickles -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_is_a_pickle_error(protocol: int) -> None:
    value = [1, "two", (3.0, b"four"), {5: dt.date(2006, 7, 8)}, uuid.UUID(int=9)]
    data = pickle.dumps(value, protocol)
    for cut in range(len(data)):
        with pytest.raises(PickleError) as info:
            loads(data[:cut])
        assert not isinstance(info.value, RefusedGlobal)
        assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ended early"),
        (b"garbage", "malformed"),
        (b"\x80\x04h\x05.", "Memo"),
        (b"\x80\x05\x97.", "out-of-band"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62), "too large"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**24) + b".", "truncated"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**62), "truncated"),
        (b"(\x85.", "MARK"),
        (b"\x80\x02]q\x00(K\x01e\x85R.", "underflow"),
        (b"\x80\x02K\x01)R.", "cannot unpickle: TypeError"),
        (b"cdatetime\ndate\n(I99999\ntR.", "cannot unpickle"),
        (b"\xff" * 64, "malformed"),
    ],
)
def test_garbage_is_a_pickle_error(data: bytes, message: str) -> None:
    with pytest.raises(PickleError, match=message) as info:
        loads(data)
    assert type(info.value) is PickleError


def test_long_messages_are_shortened() -> None:
    # ZeroDivisionError("Fraction(<4001 digits>, 0)")
    data = reduce_pickle("fractions", "Fraction", (10**4000, 0), 4)
    with pytest.raises(PickleError) as info:
        loads(data)
    assert len(str(info.value)) <= 200


def test_loads_is_thread_safe() -> None:
    data = pickle.dumps([dt.datetime(2020, 1, 1), {1, 2}, b"x" * 100], 5)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                assert loads(data) == pickle.loads(data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_extra_entries_extend_the_allowlist(protocol: int) -> None:
    counter = collections.Counter("abracadabra")
    data = pickle.dumps(counter, protocol)
    with pytest.raises(RefusedGlobal, match=r"collections\.Counter"):
        loads(data)
    assert make_loads(["collections:Counter"])(data) == counter


class Bag(list[Any]):
    """A list subclass that pickles the default way (copyreg at protocols 0-1)."""

    label: str


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_extra_list_subclass(protocol: int) -> None:
    bag = Bag([1, (2,)])
    bag.label = "x"
    data = pickle.dumps(bag, protocol)
    entry = f"{Bag.__module__}:{Bag.__qualname__}"
    with pytest.raises(RefusedGlobal, match="Bag"):
        loads(data)
    loaded = make_loads([entry])(data)
    assert type(loaded) is Bag and loaded == bag and loaded.label == "x"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_extra_plain_class_goes_through_the_reconstructor(protocol: int) -> None:
    import argparse

    namespace = argparse.Namespace(a=1, b=[2])
    data = pickle.dumps(namespace, protocol)
    with pytest.raises(RefusedGlobal, match=r"argparse\.Namespace"):
        loads(data)
    assert make_loads(["argparse:Namespace"])(data) == namespace


def test_resolve_entry() -> None:
    assert resolve_entry("collections:OrderedDict") is collections.OrderedDict
    assert resolve_entry("datetime:datetime.fromisoformat") == dt.datetime.fromisoformat
    assert resolve_entry("os.path:join") is os.path.join
    for bad in ("os.system", "os:", ":system", "os:sys tem", "os:system:x", "1os:x", "", "os:a..b"):
        with pytest.raises(ValueError, match="not of the form"):
            resolve_entry(bad)
    with pytest.raises(ValueError, match="cannot import") as info:
        resolve_entry("no_such_module_xyz:Thing")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(ValueError, match="has no") as info:
        resolve_entry("collections:NoSuchThing")
    assert isinstance(info.value.__cause__, AttributeError)


def test_make_loads_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        make_loads(encoding="no-such-codec")
    with pytest.raises(ValueError, match="cannot import"):
        make_loads(["no_such_module_xyz:Thing"])
    assert make_loads(encoding="bytes")(pickle.dumps("x")) == "x"


def test_make_dumps() -> None:
    for protocol in PROTOCOLS:
        assert pickle.loads(make_dumps(protocol)({"a": (1,)})) == {"a": (1,)}
    for protocol in (-1, pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(ValueError, match="protocol"):
            make_dumps(protocol)
    dumps = make_dumps()
    assert pickle.loads(dumps(1))
    with pytest.raises(PickleError, match="lock") as info:
        dumps([threading.Lock()])
    assert info.value.__cause__ is not None
    with pytest.raises(PickleError, match="function"):
        dumps(lambda: None)
