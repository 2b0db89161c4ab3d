"""Facts about plain Python values that several modules need, stated once.

:data:`BUILTIN_EXCEPTIONS` is what the codec accepts as ``$exception`` types,
what the unpickler allows by default and what the demo backend raises;
:data:`FRACTION_TEXT` is the only text form of a ``Fraction`` that the codec
and the unpickler accept (``Fraction``'s own parser also takes exponents and
would expand ``"1e999999999"`` into a billion-digit integer).
"""

from __future__ import annotations

import builtins
import re
from typing import Final

__all__ = ["BUILTIN_EXCEPTIONS", "FRACTION_TEXT"]

BUILTIN_EXCEPTIONS: Final[dict[str, type[BaseException]]] = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}
"""Builtin exception classes by every name builtins gives them (``IOError`` too)."""

FRACTION_TEXT: Final = re.compile(r"([+-]?[0-9]+)(?:/([0-9]+))?")
"""``"n"`` or ``"n/d"``: the groups are the numerator and the denominator (or None)."""
