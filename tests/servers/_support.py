"""Helpers shared by the scripts in this folder.

Everything here runs on every Python from 2.7 and 3.6 to the newest: no
f-strings, no annotations, standard library only.  The scripts import it by
name because Python puts the script's own folder first on ``sys.path``.
"""

from __future__ import print_function

import os
import signal
import socket
import sys
import threading
from multiprocessing import connection


def parse_address(text):
    """Split a connbridge address into a stdlib Listener/Client address and family.

    ``host:port`` -> ``((host, port), "AF_INET")``; ``[v6]:port`` ->
    ``((v6, port), "AF_INET6")``; ``unix:/path`` -> ``("/path", "AF_UNIX")``;
    ``unix:@name`` -> ``("\\0name", "AF_UNIX")`` (Linux abstract namespace).
    The family is always explicit: old ``address_type()`` versions do not
    recognise IPv6 tuples or abstract names.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("@"):
            return "\0" + path[1:], "AF_UNIX"
        return path, "AF_UNIX"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        family = "AF_INET6"
    else:
        host, sep, port = text.rpartition(":")
        family = "AF_INET"
    if not sep or not host or not port.isdigit():
        raise ValueError("expected host:port, [v6]:port or unix:/path, got %r" % (text,))
    return (host, int(port)), family


def format_address(address):
    """The connbridge spelling of an address that ``Listener.address`` reports."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        if ":" in host:
            return "[%s]:%d" % (host, port)
        return "%s:%d" % (host, port)
    if not isinstance(address, str):  # Python 3 reports abstract names as bytes
        address = address.decode("utf-8", "replace")
    if address.startswith("\0"):
        return "unix:@" + address[1:]
    return "unix:" + address


def read_authkey(variable):
    """The authkey bytes in environment *variable*, or None when *variable* is None."""
    if variable is None:
        return None
    environb = getattr(os, "environb", None)
    if environb is not None:  # Python 3: the exact bytes
        key = environb.get(variable.encode("ascii"))
    else:  # Python 2: os.environ already holds bytes
        key = os.environ.get(variable)
    if not key:
        sys.exit("environment variable %s is unset or empty" % (variable,))
    return key


def connect(address, family, authkey):
    """A stdlib client connection to *address*, IPv6 included.

    ``multiprocessing.connection.Client`` derives the socket family from the
    address alone and takes every tuple for IPv4, so for IPv6 the socket is
    opened here and the stdlib handshake functions run on it.
    """
    if family != "AF_INET6":
        return connection.Client(address, family=family, authkey=authkey)
    sock = socket.socket(socket.AF_INET6)
    try:
        sock.connect(address)
        if hasattr(sock, "detach"):
            conn = connection.Connection(sock.detach())
        else:  # Python 2
            import _multiprocessing

            conn = _multiprocessing.Connection(os.dup(sock.fileno()))
    finally:
        sock.close()
    if authkey is not None:
        try:
            connection.answer_challenge(conn, authkey)
            connection.deliver_challenge(conn, authkey)
        except BaseException:
            conn.close()
            raise
    return conn


def write_ready_file(path, text):
    """Write *text* to *path* atomically: readers see nothing or the whole line."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        f.write(text + "\n")
    os.rename(partial, path)


def _watch_stdin():
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    # The main thread is blocked in accept(): only a signal interrupts it.
    os.kill(os.getpid(), signal.SIGTERM)


def exit_on_stdin_eof():
    """Exit (by SIGTERM to ourselves) once stdin is closed: the parent is gone."""
    thread = threading.Thread(target=_watch_stdin, name="stdin-watch")
    thread.daemon = True
    thread.start()


def add_common_arguments(parser):
    """The options every server script takes."""
    parser.add_argument("address", help="host:port, [v6]:port, unix:/path or unix:@name")
    parser.add_argument("--authkey-env", metavar="VAR", help="environment variable with the key")
    parser.add_argument("--ready-file", metavar="PATH", help="write the bound address here")
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
