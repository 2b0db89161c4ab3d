"""Load pickles from backends without letting them run code.

Unpickling is code execution: a pickle names globals (``module.name``) and
calls them with arguments of its choosing.  The gateway therefore loads
replies with an unpickler whose :meth:`~pickle.Unpickler.find_class` only
hands out objects from a table built once, up front, from an allowlist of
``"module:qualname"`` entries.  Nothing is imported while a pickle loads, and
a global outside the table raises :class:`~connbridge.errors.RefusedGlobal`
before any of the pickle's calls to it can happen.

Some allowed callables are harmless for the arguments a pickler writes but
not for arbitrary ones (``bytearray(10**12)`` allocates a terabyte), so the
table holds guards for them that accept only the argument shapes that real
pickles use:

* ``bytes`` / ``bytearray``: never an integer size;
* ``_codecs.encode``: only a ``str`` with a latin-1 codec name (how
  protocols 0-2 spell ``bytes``);
* ``copyreg._reconstructor``: only for classes in the table, with a plain
  builtin base (how protocols 0-1 spell most class instances, ``UUID`` among
  them), and only where that base rebuilds the class exactly (an
  ``OrderedDict`` rebuilt by ``dict`` would come back empty);
* ``fractions.Fraction``: only integers or an ``"n/d"`` string (its string
  parser would expand ``"1e999999999"`` into a billion-digit integer);
* ``fractions.Fraction`` and ``decimal.Decimal``: integers of at most
  :data:`MAX_NUMBER_BITS` bits (a gcd, or the conversion of an integer to a
  Decimal, takes time quadratic in its size: 18 s for four million bits).

Before any of that, :func:`connbridge.pickle_limits.check` walks the
pickle's opcodes and refuses, with
:class:`~connbridge.errors.PickleLimitExceeded`, one that would nest deeper
than ``max_depth``, hash a set member or dict key of more than
``max_hashed_nodes`` nodes, make constructors, hashing and BUILD do more
than ``work_per_byte`` items of work per byte of pickle (plus ``max_nodes``),
or expand through shared references to more than its size plus
``max_nodes`` nodes.  So what a pickle can cost is bounded by its size: the
memory and the time a load takes are at most a constant times the pickle's
size plus a fixed allowance, and the C stack at most ``max_depth`` levels
deep (hashing nested tuples recurses in C).  The constant is that of any
unpickler, not one a hostile pickle can raise: one byte of opcode can make
one small object (an empty dict: about 100 bytes), and the walk itself takes
about 0.1 to 0.2 us per opcode.

Python 2 pickles name ``__builtin__``, ``exceptions`` and ``copy_reg``; those
names are mapped to their Python 3 homes with the stdlib's own tables before
the lookup.  Python 2 byte strings are decoded with ``encoding`` (``"utf-8"``
by default).  A Python 2 ``datetime``/``date``/``time`` stores its state as a
binary byte string, so pickles holding them need ``encoding="latin1"`` (or
``"bytes"``, which turns every Python 2 ``str`` into ``bytes``).

Known limits: distinct values with equal hashes (integers equal modulo
2**61 - 1) make a set or dict quadratic to build: 20,000 of them, 200 KB of
pickle, take about 1.5 s.  The ``__hash__`` of extra allowlisted classes is
assumed to be cheap.  Backends are configured by the operator; this
unpickler is a defence against a compromised one, not a sandbox.
"""

from __future__ import annotations

import codecs
import copyreg
import decimal
import fractions
import importlib
import io
import pickle
import pickletools
import re
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from .errors import PickleError, RefusedGlobal
from .pickle_limits import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HASHED_NODES,
    DEFAULT_MAX_NODES,
    DEFAULT_WORK_PER_BYTE,
    PickleLimits,
    check,
)
from .plain_types import BUILTIN_EXCEPTIONS, FRACTION_TEXT

__all__ = [
    "DEFAULT_ALLOWLIST",
    "MAX_NUMBER_BITS",
    "loads",
    "make_dumps",
    "make_loads",
    "resolve_entry",
]

_Table = dict[tuple[str, str], object]

# Every builtin exception class, under each name builtins gives it (so the
# aliases IOError and EnvironmentError, which Python 2 pickles use, resolve).
_EXCEPTION_ENTRIES: Final = frozenset(f"builtins:{name}" for name in BUILTIN_EXCEPTIONS)

DEFAULT_ALLOWLIST: Final[frozenset[str]] = frozenset(
    {
        # Types that some protocol spells as a call, or passes as the base of
        # copyreg._reconstructor.  No pickler names int, float or str, and
        # they stay out: int(Decimal("1e999999999")) computes a billion-digit
        # number, str(b, encoding) looks codecs up (and may import one).
        "builtins:object",
        "builtins:complex",
        "builtins:tuple",
        "builtins:list",
        "builtins:dict",
        "builtins:set",
        "builtins:frozenset",
        "builtins:bytes",  # guarded
        "builtins:bytearray",  # guarded
        "_codecs:encode",  # guarded
        "copyreg:_reconstructor",  # guarded
        "datetime:date",
        "datetime:time",
        "datetime:datetime",
        "datetime:timedelta",
        "datetime:timezone",
        "decimal:Decimal",
        "fractions:Fraction",  # guarded
        "uuid:UUID",
        "collections:OrderedDict",
    }
    | _EXCEPTION_ENTRIES
)
"""The ``"module:qualname"`` globals a pickle may name, before per-backend extras."""

_LATIN1_NAMES: Final = frozenset({"latin_1", "latin1", "iso_8859_1", "iso8859_1", "l1"})

# The bases copyreg._reduce_ex (protocols 0 and 1) passes for classes that
# do not override pickling: object for plain classes, a builtin type for
# subclasses of one.  Only containers are accepted: they merely iterate a
# hostile ``state``, where int or str would parse or allocate from it.
_SAFE_BASES: Final = frozenset({object, tuple, list, dict, set, frozenset})

MAX_NUMBER_BITS: Final = 16_384
"""Largest integer, in bits, that ``Fraction`` and ``Decimal`` are called with (see above)."""

_MAX_MESSAGE: Final = 200


def _text(value: object) -> str | None:
    """``value`` as text: Python 2 strings may arrive as bytes (encoding="bytes")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return None


def _is_latin1(encoding: object) -> bool:
    name = _text(encoding)
    return name is not None and name.lower().replace("-", "_") in _LATIN1_NAMES


def _bytes_args(kind: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Check the arguments of a pickled ``bytes(...)``/``bytearray(...)`` call.

    Picklers write no argument, a bytes object, or (protocols 0-2) a str
    with a latin-1 codec name.  An integer would be an allocation size.
    """
    if not args:
        return args
    source = args[0]
    if isinstance(source, int):
        raise PickleError(
            f"refused builtins.{kind}() with an integer argument: it would allocate that many bytes"
        )
    if len(args) == 1 and isinstance(source, bytes | bytearray):
        return args
    if isinstance(source, str) and len(args) == 2 and _is_latin1(args[1]):
        return (source, "latin-1")
    raise PickleError(
        f"refused builtins.{kind}() arguments: only bytes or a str with a latin-1 codec"
    )


def _guarded_bytes(*args: Any) -> bytes:
    return bytes(*_bytes_args("bytes", args))


def _guarded_bytearray(*args: Any) -> bytearray:
    return bytearray(*_bytes_args("bytearray", args))


def _guarded_encode(obj: object, encoding: object = None, errors: object = "strict") -> bytes:
    # Protocols 0-2 write bytes as _codecs.encode(text, "latin1"); refuse any
    # other codec, which could be slow, lossy or need an import.
    if not isinstance(obj, str) or not _is_latin1(encoding) or _text(errors) != "strict":
        raise PickleError("refused _codecs.encode(): only str with the latin-1 codec")
    return obj.encode("latin-1")


def _guarded_fraction(numerator: object = 0, denominator: object = None) -> fractions.Fraction:
    # Python 3.11+ pickles Fraction(n, d) with two ints, older ones with
    # str(self): "n/d" or "n".  Fraction's own string parser also accepts
    # exponents, and Fraction(Decimal) expands them: both can be made to
    # compute a huge power of ten, so only plain integers get through.
    if denominator is None:
        if type(numerator) is int:
            return fractions.Fraction(_small_int(numerator, "fractions.Fraction"))
        text = _text(numerator)
        match = FRACTION_TEXT.fullmatch(text) if text is not None else None
        if match is not None:
            top, bottom = match.groups()
            numerator, denominator = int(top), int(bottom or 1)
    if type(numerator) is int and type(denominator) is int:
        return fractions.Fraction(
            _small_int(numerator, "fractions.Fraction"),
            _small_int(denominator, "fractions.Fraction"),
        )
    raise PickleError("refused fractions.Fraction() arguments: only integers or an 'n/d' string")


def _small_int(value: int, kind: str) -> int:
    if value.bit_length() > MAX_NUMBER_BITS:
        raise PickleError(
            f"refused {kind}() of a {value.bit_length()}-bit integer: more than "
            f"{MAX_NUMBER_BITS} bits would take quadratic time"
        )
    return value


def _guarded_decimal(value: object = "0", context: object = None) -> decimal.Decimal:
    # Decimal pickles as Decimal(str); an integer argument is converted in
    # time quadratic in its size.
    if context is not None:
        raise PickleError("refused decimal.Decimal() with a context")
    if type(value) is int:
        _small_int(value, "decimal.Decimal")
    return decimal.Decimal(value)  # type: ignore[arg-type]


_GUARDS: Final[dict[str, object]] = {
    "builtins:bytes": _guarded_bytes,
    "builtins:bytearray": _guarded_bytearray,
    "_codecs:encode": _guarded_encode,
    "fractions:Fraction": _guarded_fraction,
    "decimal:Decimal": _guarded_decimal,
}


def _make_reconstructor(classes: frozenset[type]) -> Callable[..., object]:
    """A ``copyreg._reconstructor`` limited to the table's classes.

    Protocols 0 and 1 pickle an instance of a plain class as
    ``_reconstructor(cls, base, state)`` followed by BUILD; the stdlib
    version would instantiate any class it is given.
    """

    def reconstruct(cls: object, base: object, state: object) -> object:
        if not (
            isinstance(cls, type)
            and cls in classes
            and base in _SAFE_BASES
            and isinstance(base, type)
            and issubclass(cls, base)
        ):
            raise PickleError(
                f"refused copyreg._reconstructor({_qualified(cls)}, {_qualified(base)}, ...): "
                "the class is not in the allowlist"
            )
        if base is object:
            return object.__new__(cls)
        own: Any = cls  # type objects: compare the constructors they would run
        if own.__new__ is not base.__new__ or own.__init__ is not base.__init__:
            # The base would fill the object without the class's own
            # constructor: OrderedDict(dict) comes back empty. A pickler
            # never writes this for such a class; refuse rather than
            # return a different value.
            raise PickleError(
                f"refused copyreg._reconstructor({_qualified(cls)}, {_qualified(base)}, ...): "
                f"{_qualified(base)} cannot rebuild a {_qualified(cls)} exactly"
            )
        container: Any = base  # one of the _SAFE_BASES containers
        obj = container.__new__(cls, state)
        if container.__init__ is not object.__init__:  # tuple and frozenset have none
            container.__init__(obj, state)
        return obj

    return reconstruct


def _qualified(obj: object) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return type(obj).__name__ + " instance"


def resolve_entry(entry: str) -> object:
    """Import the object an allowlist entry ``"module:qualname"`` names.

    Meant for configuration time (per-backend extras); it imports
    ``module``.  Guards are not applied here: this returns the real object.

    Raises:
        ValueError: the entry is malformed, the module cannot be imported or
            it has no such attribute.
    """
    module_name, sep, qualname = entry.partition(":")
    if (
        not sep
        or not all(part.isidentifier() for part in module_name.split("."))
        or not all(part.isidentifier() for part in qualname.split("."))
    ):
        raise ValueError(f"allowlist entry {entry!r} is not of the form 'module:qualname'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"allowlist entry {entry!r}: cannot import {module_name}") from exc
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ValueError(f"allowlist entry {entry!r}: {module_name} has no {qualname}") from exc
    return obj


def _build_table(extra: Iterable[str], substitutes: Mapping[str, object]) -> _Table:
    table: _Table = {}
    for entry in DEFAULT_ALLOWLIST:
        if entry == "copyreg:_reconstructor":
            continue  # needs the finished class set, added below
        module_name, _, qualname = entry.partition(":")
        guard = _GUARDS.get(entry)
        table[module_name, qualname] = guard if guard is not None else resolve_entry(entry)
    for entry in extra:
        obj = resolve_entry(entry)
        module_name, _, qualname = entry.partition(":")
        # An extra entry never replaces a default one: that would drop a guard.
        table.setdefault((module_name, qualname), obj)
    for entry, obj in substitutes.items():
        module_name, sep, qualname = entry.partition(":")
        if not sep:
            raise ValueError(f"substitute {entry!r} is not of the form 'module:qualname'")
        # Like an extra entry, a substitute never replaces a default one.
        table.setdefault((module_name, qualname), obj)
    classes = frozenset(obj for obj in table.values() if isinstance(obj, type))
    table["copyreg", "_reconstructor"] = _make_reconstructor(classes)
    return table


class _AllowlistUnpickler(pickle.Unpickler):
    """The C unpickler with :meth:`find_class` reduced to a table lookup."""

    # Set right after construction; a slot is cheaper than a per-instance dict.
    __slots__ = ("_table",)
    _table: _Table

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        # Called for GLOBAL, STACK_GLOBAL, INST, OBJ and the EXT opcodes.
        obj = self._table.get((module_name, global_name))
        if obj is None:
            # Python 2 names (protocols 0-2 from Python 2, or from Python 3
            # with fix_imports): retry under the Python 3 name.
            key = NAME_MAPPING.get((module_name, global_name))
            if key is None:
                key = (IMPORT_MAPPING.get(module_name, module_name), global_name)
            obj = self._table.get(key)
            if obj is None:
                raise RefusedGlobal(module_name, global_name)
        return obj

    def persistent_load(self, pid: Any, /) -> Any:
        raise PickleError("refused a persistent ID: pickles from backends must be self-contained")


_EXT_OPCODES: Final = frozenset({"EXT1", "EXT2", "EXT4"})


def _refuse_extensions(data: bytes) -> None:
    """Refuse EXT opcodes while the process has copyreg extensions registered.

    The C unpickler resolves an extension code from ``copyreg``'s cache
    before asking :meth:`find_class`, so a code that some other unpickler
    already resolved would bypass the allowlist.  Registry and cache are
    empty unless something calls ``copyreg.add_extension``, so this slow
    scan only runs then.
    """
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name in _EXT_OPCODES:
                raise PickleError(
                    "refused an extension-code opcode: copyreg extensions are not supported"
                )
    except ValueError:
        pass  # malformed: the unpickler itself reports it


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _describe(exc: Exception, encoding: str) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a Python 2 byte string in the pickle is not valid {encoding}; Python 2 "
            "pickles of binary strings (datetime objects among them) need "
            "encoding='latin1' or 'bytes'"
        )
    if isinstance(exc, EOFError):
        return "the pickle ended early (empty or truncated)"
    if isinstance(exc, MemoryError):
        return "the pickle declares a value too large to load"
    if isinstance(exc, pickle.UnpicklingError):
        return _short(f"malformed pickle: {exc}")
    return _short(f"cannot unpickle: {type(exc).__name__}: {exc}")


#: Longest pickle that may skip the opcode walk (see ``loads`` in :func:`make_loads`).
_SHORT_PICKLE: Final = 256
#: Any byte that may be an opcode sharing an object, sizing the memo or
#: touching buffers: GET (``g``), BINGET (``h``), LONG_BINGET (``j``), DUP
#: (``2``), PUT (``p``) and LONG_BINPUT (``r``), whose index sizes the memo
#: array, BYTEARRAY8, NEXT_BUFFER, READONLY_BUFFER. Matched anywhere, data
#: included, so a miss is a proof that none occurs.
_SHARING_BYTES: Final = re.compile(rb"[ghj2pr\x96\x97\x98]")


def make_loads(
    extra: Iterable[str] = (),
    *,
    encoding: str = "utf-8",
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_hashed_nodes: int = DEFAULT_MAX_HASHED_NODES,
    max_nodes: int = DEFAULT_MAX_NODES,
    work_per_byte: int = DEFAULT_WORK_PER_BYTE,
    substitutes: Mapping[str, object] | None = None,
) -> Callable[[bytes], object]:
    """Build a ``loads(data)`` that unpickles only allowlisted globals, within limits.

    ``extra`` adds ``"module:qualname"`` entries to :data:`DEFAULT_ALLOWLIST`;
    they are imported now, never while loading.  ``substitutes`` maps more
    ``"module:qualname"`` names to objects that stand in for them, imported
    from nowhere: a pickle naming ``multiprocessing.managers:Token`` then
    gets an inert class of the caller's (see :mod:`connbridge.manager`).
    Neither replaces a default entry.  ``encoding`` decodes the
    byte strings of Python 2 pickles: a codec name, or ``"bytes"`` to keep
    them as ``bytes``.  The other arguments bound what a pickle may cost
    (see :mod:`connbridge.pickle_limits`): ``max_depth`` levels of nesting,
    ``max_hashed_nodes`` nodes in one set member or dict key,
    ``work_per_byte`` items hashed, copied or built per byte of pickle, and
    ``max_nodes`` nodes that shared references may add to the result (also
    the work allowance of small pickles).

    The returned function raises :class:`~connbridge.errors.RefusedGlobal`
    for a global outside the allowlist,
    :class:`~connbridge.errors.PickleLimitExceeded` for a pickle over the
    limits (before any of it is loaded), and
    :class:`~connbridge.errors.PickleError` for any other pickle it cannot
    load (truncated, malformed, refused arguments, persistent IDs).

    Raises:
        ValueError: an entry of ``extra`` cannot be resolved, a name of
            ``substitutes`` is malformed, ``encoding`` is not a known codec,
            or a limit is not a positive integer.
    """
    if encoding != "bytes":
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {encoding!r}") from exc
    limits = PickleLimits(
        max_depth=max_depth,
        max_hashed_nodes=max_hashed_nodes,
        max_nodes=max_nodes,
        work_per_byte=work_per_byte,
    )
    table = _build_table(extra, substitutes or {})
    # The C unpickler consults copyreg's extension cache, then its registry.
    extension_cache: dict[int, object] = vars(copyreg)["_extension_cache"]
    inverted_registry: dict[int, object] = vars(copyreg)["_inverted_registry"]

    # A pickle this short, with no opcode that shares an object (GET, DUP) or
    # touches out-of-band buffers, cannot nest deeper than its length or
    # build more than a few objects per byte: the walk could only agree.
    # Most replies to a call are such pickles; the walk costs them about 2 us.
    short = min(_SHORT_PICKLE, max_depth)

    def loads(data: bytes) -> object:
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) <= short and _SHARING_BYTES.search(data) is None:
            cut = None
        else:
            cut = check(data, limits)
        if inverted_registry or extension_cache:
            _refuse_extensions(data)
        # A malformed pickle is loaded only up to the opcode where the check
        # saw the unpickler fail, so that the unpickler reports it and can
        # never go past what was checked.
        source = io.BytesIO(data if cut is None else memoryview(data)[:cut])
        unpickler = _AllowlistUnpickler(source, encoding=encoding)
        unpickler._table = table
        try:
            return unpickler.load()
        except PickleError:
            raise  # RefusedGlobal and the guards' refusals, already clear
        except Exception as exc:
            # A hostile pickle can make the loader or an allowed constructor
            # raise nearly anything (ValueError, TypeError, KeyError,
            # MemoryError for a huge declared length, ...): all mean "bad pickle".
            raise PickleError(_describe(exc, encoding)) from exc

    return loads


_default_loads: Final = make_loads()


def loads(data: bytes) -> object:
    """Unpickle ``data`` with :data:`DEFAULT_ALLOWLIST` (see :func:`make_loads`).

    Raises:
        RefusedGlobal: the pickle names a global outside the allowlist.
        PickleError: the pickle cannot be loaded for any other reason.
    """
    return _default_loads(data)


def make_dumps(protocol: int = 4) -> Callable[[object], bytes]:
    """Build a ``dumps(obj)`` that pickles with ``protocol``.

    The returned function raises :class:`~connbridge.errors.PickleError` when
    ``obj`` cannot be pickled.

    Raises:
        ValueError: ``protocol`` is not between 0 and
            :data:`pickle.HIGHEST_PROTOCOL`.
    """
    if not 0 <= protocol <= pickle.HIGHEST_PROTOCOL:
        raise ValueError(
            f"pickle protocol must be between 0 and {pickle.HIGHEST_PROTOCOL}, not {protocol}"
        )

    def dumps(obj: object) -> bytes:
        try:
            return pickle.dumps(obj, protocol)
        except Exception as exc:
            raise PickleError(
                _short(f"cannot pickle a {type(obj).__name__} value: {type(exc).__name__}: {exc}")
            ) from exc

    return dumps
