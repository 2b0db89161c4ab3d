"""Backend addresses: TCP host and port, or a Unix socket path.

Accepted spellings::

    ("127.0.0.1", 11111)     a tuple, as multiprocessing takes it
    "127.0.0.1:11111"        host:port (a host name works too)
    "[::1]:11111"            IPv6 in brackets
    "unix:/run/adder.sock"   a Unix socket path
    "unix:@adder"            a Linux abstract socket

Windows named pipes (``\\\\.\\pipe\\name``) are refused: this gateway talks to
sockets only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from .errors import AddressError

__all__ = ["Address", "AddressLike", "parse_address"]


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed backend address.

    For TCP, ``host`` and ``port`` are set; for Unix sockets, ``path`` is the
    file system path or, for an abstract socket, the name after a NUL byte.
    """

    family: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.family == "unix":
            if self.path.startswith("\0"):
                return "unix:@" + self.path[1:]
            return "unix:" + self.path
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        """True for a TCP address whose host is a literal IP (nothing to resolve)."""
        if self.family != "tcp":
            return False
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def is_loopback(self) -> bool:
        """True for Unix sockets and loopback IPs (``localhost`` counts)."""
        if self.family == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


AddressLike = Address | str | tuple[str, int]


def _port(text: str, original: object) -> int:
    if not text.isdigit():
        raise AddressError(f"invalid port in address {original!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise AddressError(f"port out of range in address {original!r}")
    return port


def parse_address(value: AddressLike) -> Address:
    """Parse any accepted spelling into an :class:`Address`.

    Raises :class:`AddressError` (a ``ValueError``) for anything else,
    including Windows named pipes.
    """
    if isinstance(value, Address):
        return value
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
            raise AddressError(f"a tuple address must be (host, port), not {value!r}")
        name, number = value
        _port(str(number), value)
        return Address("tcp", host=name.strip("[]") or "127.0.0.1", port=number)
    if not isinstance(value, str):
        raise AddressError(f"an address must be a string or (host, port), not {value!r}")
    text = value.strip()
    if text.startswith(("\\\\", "//")) or text.lower().startswith("pipe:"):
        raise AddressError(
            f"{value!r} looks like a Windows named pipe, which connbridge does not "
            "support; serve the Listener on a TCP or Unix socket address"
        )
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("@"):
            if len(path) < 2:
                raise AddressError(f"empty abstract socket name in {value!r}")
            return Address("unix", path="\0" + path[1:])
        if not path:
            raise AddressError(f"empty Unix socket path in {value!r}")
        return Address("unix", path=path)
    if text.startswith("/"):
        raise AddressError(f"{value!r}: write Unix socket paths as 'unix:{text}'")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise AddressError(f"expected '[ipv6]:port', got {value!r}")
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise AddressError(f"invalid IPv6 address in {value!r}") from exc
        return Address("tcp", host=host, port=_port(text[end + 2 :], value))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise AddressError(f"expected 'host:port', '[ipv6]:port' or 'unix:/path', got {value!r}")
    if ":" in host:
        raise AddressError(f"write IPv6 addresses in brackets, as '[{host}]:{port_text}'")
    return Address("tcp", host=host, port=_port(port_text, value))
