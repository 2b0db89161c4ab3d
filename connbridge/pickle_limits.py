"""Price a pickle before it is loaded: what it would nest, hash, copy and build.

The C unpickler is fast and does not recurse, but what it builds can cost far
more than the pickle's size, in places where no Python code runs and nothing
can interrupt it:

* hashing: a tuple put into a set or used as a dict key is hashed through
  every level of it, recursively in C and without caching; a million nested
  1-tuples overflow the C stack, and 40 levels of tuples that each hold the
  previous level twice (shared through the memo: 528 bytes of pickle) take
  2**40 steps;
* copying: a constructor called on a memoized object copies it each time
  (``list(x)`` 250 times over one million-item list is 2 GiB), and BUILD
  copies a shared state dict into every object it is applied to;
* the memo: a PUT with index 2**27 makes the unpickler allocate and clear a
  2 GiB table;
* nesting and sharing left in the result cost its consumers (``repr``, JSON
  encoders) in proportion to its expanded size and depth.

:func:`check` walks the opcodes once, before anything is loaded, with an
abstract stack that mirrors the C unpickler's (stack, marks and fence, memo)
but holds only numbers: for each object its expanded size (how many nodes it
has with shared parts counted each time they are reached, saturated just
above the limit), its depth, and for strings, bytes and long integers their
length in bytes.  From those it refuses, with :class:`PickleLimitExceeded`:

* any object nested deeper than ``max_depth``;
* a set member, frozenset item or dict key whose expansion (what hashing it
  visits) exceeds ``max_hashed_nodes``;
* more *work* than ``work_per_byte`` times the pickle's size plus
  ``max_nodes``: work is what hashing visits, what the arguments of a call
  (REDUCE, NEWOBJ, OBJ, INST: constructors iterate and copy them) and a BUILD
  state expand to, counting bytes for strings and long integers;
* a result whose expansion exceeds the pickle's size plus ``max_nodes``;
* a memo index beyond the pickle's size (the unpickler would allocate a
  table that large), and BUILD or item opcodes applied
  to a class or function (it would change it for every later load);
* frames that do not end on an opcode boundary (the unpickler, reading from
  a file, would read the straddling opcode from after the frame: not what
  this walk saw).

Before loading, nothing but the walk has run; what it passes may still make
an allowed constructor refuse its arguments (see :mod:`connbridge.unpickler`).

Everything the walk does is linear in the pickle's size; most opcodes cost
one comparison or table lookup and one append, runs of the same scalar
opcode are skipped by the regex engine.  It is still Python: about 90 ms for
a 1 MiB pickle of JSON-like records (half a million opcodes), where the C
unpickler takes 12 ms.  Where the walk finds the pickle malformed
(truncated, unknown opcode, stack or mark underflow, missing memo entry,
persistent IDs, out-of-band buffers) the C unpickler fails at that same
point, so the walk stops and lets the unpickler report it in its own words.

Two approximations, both on the safe side: the result of a call is assumed
to be as large and as deep as its arguments, and a container changed after a
reference to it was taken from the memo (which is how cycles are built) makes
the walk recount the result exactly on a second pass, where a reference back
to an enclosing container counts as one node.  Not covered: hash collisions
between distinct values (a set of many integers equal modulo 2**61 - 1 is
quadratic to build) and ``__hash__`` methods of extra allowlisted classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

from .errors import PickleError, PickleLimitExceeded

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_HASHED_NODES",
    "DEFAULT_MAX_NODES",
    "DEFAULT_WORK_PER_BYTE",
    "PickleLimits",
    "check",
]

DEFAULT_MAX_DEPTH: Final = 256
"""Deepest nesting of containers a pickle may build (the gateway's default ``max_depth``)."""

DEFAULT_MAX_HASHED_NODES: Final = 100_000
"""Largest expansion of one set member, frozenset item or dict key."""

DEFAULT_MAX_NODES: Final = 1_000_000
"""Nodes that sharing may add to a result beyond the pickle's size, and the work allowance."""

DEFAULT_WORK_PER_BYTE: Final = 4
"""Work (hashing, copying by constructors, BUILD) allowed per byte of pickle."""


@dataclass(frozen=True, slots=True)
class PickleLimits:
    """The bounds :func:`check` enforces; see the module docstring for what each means."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_hashed_nodes: int = DEFAULT_MAX_HASHED_NODES
    max_nodes: int = DEFAULT_MAX_NODES
    work_per_byte: int = DEFAULT_WORK_PER_BYTE

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_hashed_nodes", "max_nodes", "work_per_byte"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")

    def work_limit(self, size: int) -> int:
        """The work a pickle of ``size`` bytes may cost."""
        return self.work_per_byte * size + self.max_nodes


class _Malformed(Exception):
    """The C unpickler fails at this point of the pickle: stop and let it say why."""

    def __init__(self, cut: int = 0) -> None:
        super().__init__(cut)
        #: Where the failing opcode (and its argument) ends.
        self.cut = cut


# Abstract objects on the walk's stack (the fields are read by index):
#   None                  a scalar: one node, depth 0, no weight
#   (size, depth, weight) an immutable object: tuple, frozenset, or a string,
#                         bytes or integer of ``weight`` bytes (size 1, depth 0)
#   [size, depth, weight, shared]
#                         a mutable object (list, dict, set, an object made by
#                         a call); ``shared`` once a reference to it came from
#                         the memo or DUP, after which changing it makes the
#                         sizes recorded in its parents stale
# ``weight`` is the bytes of strings, bytes and integers among an object's
# items, which constructors copy and hashing reads (counted once per call for
# an object passed several times).
_GLOBAL: Final = (1, 0, 0)  # a class or function from find_class; compared by identity

# Strings, bytes and integers shorter than this are plain scalars (None).
_WEIGHTY: Final = 64

_SIZE, _DEPTH, _WEIGHT, _SHARED = 0, 1, 2, 3

# TUPLE1, TUPLE2 and TUPLE3 of scalars.
_SCALAR_TUPLES: Final = ((2, 1, 0), (3, 1, 0), (4, 1, 0))

# Opcodes that push one scalar and have an argument of fixed width.
_SCALAR_WIDTH: Final = [-1] * 256
for _op, _width in (
    (b"N", 0),  # NONE
    (b"\x88", 0),  # NEWTRUE
    (b"\x89", 0),  # NEWFALSE
    (b"K", 1),  # BININT1
    (b"M", 2),  # BININT2
    (b"J", 4),  # BININT
    (b"G", 8),  # BINFLOAT
):
    _SCALAR_WIDTH[_op[0]] = _width
del _op, _width

# Runs of one of those opcodes, as the regex engine matches them.
_SCALAR_RUNS: Final = {
    op: re.compile(b"(?:" + re.escape(bytes([op])) + b"[\x00-\xff]" * width + b")+")
    for op, width in enumerate(_SCALAR_WIDTH)
    if width >= 0
}

# Opcodes whose argument is a line of text and that push one scalar:
# INT, LONG, FLOAT, STRING, UNICODE.
_TEXT_SCALARS: Final = frozenset(b"ILFSV")

# Opcodes that push a string or bytes after a length of 1, 4 or 8 bytes.
_COUNTED: Final = {
    0x8C: (1, False),  # SHORT_BINUNICODE
    ord("C"): (1, False),  # SHORT_BINBYTES
    ord("U"): (1, False),  # SHORT_BINSTRING
    0x8A: (1, False),  # LONG1 (an integer)
    ord("X"): (4, False),  # BINUNICODE
    ord("B"): (4, False),  # BINBYTES
    ord("T"): (4, True),  # BINSTRING (signed count)
    0x8B: (4, True),  # LONG4 (signed count)
    0x8D: (8, False),  # BINUNICODE8
    0x8E: (8, False),  # BINBYTES8
    0x96: (8, False),  # BYTEARRAY8
}


def check(data: bytes, limits: PickleLimits) -> int | None:
    """Refuse ``data`` if loading it would exceed ``limits``.

    Returns None for a pickle within the limits.  For a malformed one it
    returns where the opcode at which the unpickler fails ends: the caller
    loads only that much, so that the unpickler reports the error in its
    own words and can never run past the point this walk checked.

    Raises:
        PickleLimitExceeded: loading ``data`` would exceed one of ``limits``.
        PickleError: the unpickler would read ``data`` differently from this
            walk (an opcode that runs past the end of its frame), or it holds
            READONLY_BUFFER (which only out-of-band buffers use).
    """
    try:
        result, rewalk = _walk(data, limits, graph=False)
        if rewalk:
            result, _ = _walk(data, limits, graph=True)
            result = _recount(result, len(data) + limits.max_nodes)
            if result is not None and result[_DEPTH] > limits.max_depth:
                raise _too_deep(limits)
        _check_result(result, data, limits)
    except _Malformed as exc:
        return min(exc.cut, len(data))
    return None


def _check_result(node: Any, data: bytes, limits: PickleLimits) -> None:
    if node is not None and node[_SIZE] > len(data) + limits.max_nodes:
        raise PickleLimitExceeded(
            "max_nodes",
            f"the result expands to more than {len(data) + limits.max_nodes} nodes "
            f"(the pickle's size plus max_nodes = {limits.max_nodes}) through shared references",
        )


def _straddles() -> PickleError:
    return PickleError("refused a pickle with an opcode that runs past the end of its frame")


def _too_deep(limits: PickleLimits) -> PickleLimitExceeded:
    return PickleLimitExceeded(
        "max_depth",
        f"the pickle nests containers deeper than {limits.max_depth} levels (max_depth)",
    )


def _too_much_work(work_limit: int, limits: PickleLimits) -> PickleLimitExceeded:
    return PickleLimitExceeded(
        "work_per_byte",
        f"loading the pickle would hash, copy or build more than {work_limit} items "
        f"(work_per_byte = {limits.work_per_byte} per byte of pickle, plus max_nodes = "
        f"{limits.max_nodes}): shared objects are used over and over",
    )


def _too_big_to_hash(limits: PickleLimits) -> PickleLimitExceeded:
    return PickleLimitExceeded(
        "max_hashed_nodes",
        f"a set member or dict key expands to more than {limits.max_hashed_nodes} nodes "
        "(max_hashed_nodes): hashing it would take too long",
    )


def _fold(items: list[Any]) -> tuple[int, int, int]:
    """Expanded size, depth and weight of a sequence of abstract objects."""
    size = len(items)
    depth = weight = 0
    for node in filter(None, items):
        size += node[_SIZE] - 1
        weight += node[_WEIGHT]
        if node[_DEPTH] > depth:
            depth = node[_DEPTH]
    return size, depth, weight


def _walk(data: bytes, limits: PickleLimits, *, graph: bool) -> tuple[Any, bool]:
    """One pass over the opcodes: ``(abstract result, whether a recount is needed)``.

    With ``graph``, every mutable or immutable container also records its
    items (as a fifth field, or in ``_EDGES``) for :func:`_recount`.
    """
    end = len(data)
    max_depth = limits.max_depth
    max_hashed = limits.max_hashed_nodes
    cap = end + limits.max_nodes + 1  # sizes saturate here
    work_limit = limits.work_limit(end)
    work = 0
    rewalk = False
    stack: list[Any] = []
    marks: list[int] = []
    fence = 0
    memo: dict[int, Any] = {}
    push = stack.append
    memo_lookup = memo.get
    framed, limit = False, end
    scalar_width = _SCALAR_WIDTH
    pos = 0

    def hashed(keys: list[Any]) -> int:
        # The work of hashing ``keys``; refuses one too large to hash.
        cost = len(keys)
        for key in filter(None, keys):
            size = key[_SIZE] + key[_WEIGHT]
            if size > max_hashed:
                raise _too_big_to_hash(limits)
            cost += size
        return cost

    def new_tuple(items: list[Any]) -> Any:
        # Call arguments are tuples: a string passed twice to one call is
        # copied (or hashed: hashes of str and bytes are cached) once at most.
        size, depth, weight = _fold(items)
        if weight:
            weight = sum({id(node): node[_WEIGHT] for node in filter(None, items)}.values())
        depth += 1
        if depth > max_depth:
            raise _too_deep(limits)
        if graph:
            return (min(size + 1, cap), depth, weight, items)
        return (min(size + 1, cap), depth, weight)

    def new_mutable(items: list[Any]) -> list[Any]:
        size, depth, weight = _fold(items)
        depth += 1
        if depth > max_depth:
            raise _too_deep(limits)
        node: list[Any] = [min(size + 1, cap), depth, weight, 0]
        if graph:
            node.append(items)
        return node

    def add_items(target: Any, items: list[Any]) -> bool:
        # APPEND(S), SETITEM(S), ADDITEMS, BUILD: ``items`` go into ``target``.
        # Returns whether that changed a shared object (a recount is needed).
        if target is None or not items:
            return False  # a scalar: the unpickler fails, or extends a bytearray
        if target is _GLOBAL:
            raise PickleLimitExceeded(
                "globals", "refused a pickle that changes a class or function it names"
            )
        if type(target) is not list:
            return False  # a tuple or frozenset: the unpickler fails
        size, depth, weight = _fold(items)
        target[_SIZE] = min(target[_SIZE] + size, cap)
        target[_WEIGHT] += weight
        if graph:
            target[4].extend(items)
        if target[_SHARED]:
            # Its parents' numbers are stale now, and a cycle (which is how
            # one is built) would inflate its depth at each step: leave the
            # depth to the recount. The size still grows, since calls and
            # hashing are charged by it.
            return True
        if depth >= target[_DEPTH]:
            if depth >= max_depth:
                raise _too_deep(limits)
            target[_DEPTH] = depth + 1
        return False

    def pop() -> Any:
        if len(stack) <= fence:
            raise _Malformed
        return stack.pop()

    def marker() -> int:
        nonlocal fence
        if not marks:
            raise _Malformed
        mark = marks.pop()
        fence = marks[-1] if marks else 0
        return mark

    def line() -> int:
        # Position just after the next newline; like the unpickler, a last
        # line without one runs to the end.
        found = data.find(b"\n", pos)
        return end if found < 0 else found + 1

    def memo_put(index: int) -> None:
        if len(stack) <= fence:
            raise _Malformed
        if index > end + 1024:  # the pickler numbers them 0, 1, 2...
            raise PickleLimitExceeded(
                "memo", f"refused a memo index of {index}: larger than the pickle itself"
            )
        memo[index] = stack[-1]

    def memo_get(index: int) -> None:
        node = memo.get(index)
        if node is None and index not in memo:
            raise _Malformed
        if type(node) is list:
            node[_SHARED] = 1
        push(node)

    def call(args: Any) -> None:
        # REDUCE, NEWOBJ, OBJ, INST: the callable may iterate, copy or hash
        # its arguments; its result is taken to be as large as they are.
        nonlocal work
        if args is None:
            push([1, 1, 0, 0, []] if graph else [1, 1, 0, 0])
            return
        work += args[_SIZE] + args[_WEIGHT]
        if work > work_limit:
            raise _too_much_work(work_limit, limits)
        node = [args[_SIZE], max(args[_DEPTH], 1), args[_WEIGHT], 0]
        if graph:
            node.append(list(_items(args) or ()))
        push(node)

    try:
        while True:
            while pos < limit:
                op = data[pos]
                pos += 1
                if op == 0x68:  # BINGET
                    pos += 1
                    node = memo_lookup(data[pos - 1], memo)  # memo itself: "no such entry"
                    if node is memo:
                        raise _Malformed
                    if node.__class__ is list:
                        node[_SHARED] = 1
                    push(node)
                elif op == 0x94:  # MEMOIZE
                    if len(stack) <= fence:
                        raise _Malformed
                    memo[len(memo)] = stack[-1]
                elif (width := scalar_width[op]) >= 0:
                    if (
                        pos + width < limit
                        and data[pos + width] == op
                        and (run := _SCALAR_RUNS[op].match(data, pos - 1, limit)) is not None
                    ):
                        # A run of the same opcode (a list of Nones or of small
                        # integers): skip it at the speed of the regex engine.
                        stack += repeat(None, (run.end() - pos + 1) // (width + 1))
                        pos = run.end()
                    else:
                        pos += width
                        push(None)
                elif op == 0x28:  # MARK
                    fence = len(stack)
                    marks.append(fence)
                elif (
                    op == 0x8C or op == 0x55 or op == 0x43
                ):  # SHORT_BINUNICODE, _BINSTRING, _BINBYTES
                    size = data[pos]
                    pos += 1 + size
                    push(None if size < _WEIGHTY else (1, 0, size))
                elif op == 0x65 or op == 0x75 or op == 0x90:  # APPENDS, SETITEMS, ADDITEMS
                    if not marks:
                        raise _Malformed
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    if mark > len(stack) or mark <= fence:
                        raise _Malformed
                    items = stack[mark:]
                    del stack[mark:]
                    if op == 0x75:
                        if len(items) % 2:
                            raise _Malformed
                        keys = items[0::2]
                        work += hashed(keys) if any(keys) else len(keys)
                    elif op == 0x90:
                        work += hashed(items)
                    if work > work_limit:
                        raise _too_much_work(work_limit, limits)
                    target = stack[-1]
                    if target.__class__ is list and not graph:
                        # The common case, inlined: add_items for a mutable target.
                        size = len(items)
                        depth = weight = 0
                        for node in filter(None, items):
                            size += node[0] - 1
                            weight += node[2]
                            if node[1] > depth:
                                depth = node[1]
                        size += target[0]
                        target[0] = size if size < cap else cap
                        target[2] += weight
                        if target[3]:
                            rewalk = True  # see add_items
                        elif depth >= target[1]:
                            if depth >= max_depth:
                                raise _too_deep(limits)
                            target[1] = depth + 1
                    elif add_items(target, items):
                        rewalk = True
                elif op == 0x5D or op == 0x7D or op == 0x8F:  # EMPTY_LIST, EMPTY_DICT, EMPTY_SET
                    push([1, 1, 0, 0, []] if graph else [1, 1, 0, 0])
                elif op == 0x86 or op == 0x85 or op == 0x87:  # TUPLE2, TUPLE1, TUPLE3
                    start = len(stack) + 0x84 - op
                    if start < fence:
                        raise _Malformed
                    items = stack[start:]
                    del stack[start:]
                    if graph or any(items):
                        push(new_tuple(items))
                    else:  # scalars only
                        push(_SCALAR_TUPLES[op - 0x85])
                elif op == 0x29:  # EMPTY_TUPLE
                    push((1, 1, 0))
                elif op == 0x71:  # BINPUT
                    pos += 1
                    memo_put(data[pos - 1])
                elif op == 0x72:  # LONG_BINPUT
                    pos += 4
                    memo_put(int.from_bytes(data[pos - 4 : pos], "little"))
                elif op == 0x6A:  # LONG_BINGET
                    pos += 4
                    memo_get(int.from_bytes(data[pos - 4 : pos], "little"))
                elif op in _COUNTED:
                    count_width, signed = _COUNTED[op]
                    pos += count_width
                    if pos > end:
                        raise _Malformed
                    size = int.from_bytes(data[pos - count_width : pos], "little", signed=signed)
                    if size < 0:
                        raise _Malformed
                    if op == 0x96 and pos + size > end:
                        # A truncated BYTEARRAY8 leaves CPython 3.11's unpickler
                        # freeing a bytearray it still exports (a SystemError
                        # on stderr): stop the load before it.
                        pos -= 1 + count_width
                        raise _Malformed
                    pos += size
                    push(None if size < _WEIGHTY else (1, 0, size))
                elif op == 0x61 or op == 0x73:  # APPEND, SETITEM
                    count = 1 if op == 0x61 else 2
                    start = len(stack) - count
                    if start <= fence:
                        raise _Malformed
                    items = stack[start:]
                    del stack[start:]
                    if op == 0x73:
                        work += hashed(items[:1])
                        if work > work_limit:
                            raise _too_much_work(work_limit, limits)
                    if add_items(stack[-1], items):
                        rewalk = True
                elif op == 0x74 or op == 0x6C or op == 0x64 or op == 0x91:
                    # TUPLE, LIST, DICT, FROZENSET
                    mark = marker()
                    items = stack[mark:]
                    del stack[mark:]
                    if op == 0x74:
                        push(new_tuple(items))
                    elif op == 0x6C:
                        push(new_mutable(items))
                    elif op == 0x64:
                        if len(items) % 2:
                            raise _Malformed
                        work += hashed(items[0::2])
                        if work > work_limit:
                            raise _too_much_work(work_limit, limits)
                        push(new_mutable(items))
                    else:
                        work += hashed(items)
                        if work > work_limit:
                            raise _too_much_work(work_limit, limits)
                        push(new_tuple(items))
                elif op == 0x95:  # FRAME
                    # The unpickler buffers a frame, and an opcode that needs
                    # more than the rest of the buffer is read from after it:
                    # frames that do not end on an opcode boundary would be
                    # read differently from this walk, so they are refused.
                    pos += 8
                    if framed and pos > limit:
                        raise _straddles()
                    length = int.from_bytes(data[pos - 8 : pos], "little")
                    if pos > end or pos + length > end:
                        raise _Malformed
                    if framed and pos < limit:
                        if pos + length > limit:
                            raise _straddles()
                    else:  # a new frame
                        framed, limit = True, pos + length
                elif op == 0x52 or op == 0x81:  # REDUCE, NEWOBJ
                    if len(stack) <= fence + 1:
                        raise _Malformed
                    args = stack.pop()
                    stack.pop()
                    call(args)
                elif op == 0x62:  # BUILD
                    state = pop()
                    if len(stack) <= fence:
                        raise _Malformed
                    if state is not None:
                        work += state[_SIZE] + state[_WEIGHT]
                        if work > work_limit:
                            raise _too_much_work(work_limit, limits)
                    if add_items(stack[-1], [state]):
                        rewalk = True
                elif op == 0x93:  # STACK_GLOBAL
                    pop()
                    pop()
                    push(_GLOBAL)
                elif op == 0x63:  # GLOBAL: module and name, each on a line
                    pos = line()
                    pos = line()
                    push(_GLOBAL)
                elif op == 0x2E:  # STOP
                    if len(stack) <= fence:
                        raise _Malformed
                    return stack[-1], rewalk
                elif op == 0x80:  # PROTO
                    pos += 1
                    if data[pos - 1] > 5:
                        raise _Malformed
                elif op in _TEXT_SCALARS:
                    start = pos
                    pos = line()
                    size = pos - start
                    push(None if size < _WEIGHTY else (1, 0, size))
                elif op == 0x30:  # POP: the mark, if one is on top
                    if marks and marks[-1] == len(stack):
                        marks.pop()
                        fence = marks[-1] if marks else 0
                    else:
                        pop()
                elif op == 0x31:  # POP_MARK
                    del stack[marker() :]
                elif op == 0x32:  # DUP
                    if len(stack) <= fence:
                        raise _Malformed
                    node = stack[-1]
                    if type(node) is list:
                        node[_SHARED] = 1
                    push(node)
                elif op == 0x67 or op == 0x70:  # GET, PUT: a decimal index on a line
                    start = pos
                    pos = line()
                    try:
                        # The unpickler parses the line as a C string: up to a NUL.
                        index = int(data[start:pos].partition(b"\0")[0])
                    except ValueError:
                        raise _Malformed from None
                    if index < 0:
                        raise _Malformed
                    if op == 0x67:
                        memo_get(index)
                    else:
                        memo_put(index)
                elif op == 0x6F:  # OBJ: MARK class args...
                    mark = marker()
                    if len(stack) - mark < 1:
                        raise _Malformed
                    items = stack[mark + 1 :]
                    del stack[mark:]
                    call(new_tuple(items))
                elif op == 0x69:  # INST: module and name lines, MARK args...
                    pos = line()
                    pos = line()
                    mark = marker()
                    items = stack[mark:]
                    del stack[mark:]
                    call(new_tuple(items))
                elif op == 0x92:  # NEWOBJ_EX: class, args, kwargs
                    kwargs = pop()
                    args = pop()
                    pop()
                    if kwargs is not None:
                        work += kwargs[_SIZE] + kwargs[_WEIGHT]
                    call(args)
                elif op == 0x82 or op == 0x83 or op == 0x84:  # EXT1, EXT2, EXT4
                    pos += (1, 2, 4)[op - 0x82]
                    push(_GLOBAL)
                elif op == 0x98:  # READONLY_BUFFER
                    # Only meaningful after NEXT_BUFFER (out-of-band data, which
                    # replies never have), and it corrupts a bytearray's
                    # export count in CPython 3.11's unpickler.
                    raise PickleError("refused a READONLY_BUFFER opcode: replies have no buffers")
                elif op == 0x50:  # PERSID: the unpickler reads the ID, then refuses it
                    pos = line()
                    raise _Malformed
                else:
                    # PERSID, BINPERSID (refused by the unpickler), NEXT_BUFFER (no
                    # buffers are given) and unknown opcodes: the load fails here.
                    raise _Malformed

            # Past the end of the data, or of the frame being read.
            if framed and pos == limit:
                framed, limit = False, end  # out of the frame: read on
            elif framed:
                raise _straddles()
            else:
                raise _Malformed  # the data ended before STOP
    except (_Malformed, IndexError):
        # IndexError: the pickle ended before STOP.
        raise _Malformed(pos) from None


def _recount(root: Any, limit: int) -> Any:
    """The exact expanded size and depth of ``root``, from the items a graph walk recorded.

    A reference back to a container that encloses it counts as one node and
    adds no depth (the expansion of a cycle is infinite; ``repr`` prints
    such a reference as ``[...]``).  Returns ``(size, depth, 0)`` with the
    size saturated at ``limit + 1``.
    """
    items = _items(root)
    if items is None:
        return root
    cap = limit + 1
    done: dict[int, tuple[int, int]] = {}
    on_path = {id(root)}
    # Each frame: node, iterator over its items, size so far, depth so far.
    frames: list[list[Any]] = [[root, iter(items), 1, 1]]
    while frames:
        frame = frames[-1]
        for child in frame[1]:
            if child is None:
                frame[2] += 1
                continue
            items = _items(child)
            if items is None:
                size, depth = child[_SIZE], child[_DEPTH]
            else:
                key = id(child)
                known = done.get(key)
                if known is None:
                    if key in on_path:
                        frame[2] += 1  # a reference back to an enclosing container
                        continue
                    on_path.add(key)
                    frames.append([child, iter(items), 1, 1])
                    break
                size, depth = known
            frame[2] = min(frame[2] + size, cap)
            if depth >= frame[3]:
                frame[3] = depth + 1
        else:
            frames.pop()
            node, _, size, depth = frame
            on_path.discard(id(node))
            done[id(node)] = (size, depth)
            if frames:
                parent = frames[-1]
                parent[2] = min(parent[2] + size, cap)
                if depth >= parent[3]:
                    parent[3] = depth + 1
    size, depth = done[id(root)]
    return (size, depth, 0)


def _items(node: Any) -> list[Any] | None:
    """The recorded items of a container from a graph walk, or None for a leaf."""
    if type(node) is list and len(node) == 5:
        return node[4]  # type: ignore[no-any-return]
    if type(node) is tuple and len(node) == 4:
        return node[3]  # type: ignore[no-any-return]
    return None
