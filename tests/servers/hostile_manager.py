"""A manager-like server whose replies try to make a client connect elsewhere.

Usage::

    python hostile_manager.py ADDRESS --silent HOST:PORT [--authkey-env VAR]
                              [--ready-file PATH] [--watch-stdin]

It speaks the ``multiprocessing.managers`` protocol (Python 3.8+) with a
``Listener`` of its own: ``create`` answers an object ``"bait"`` that
exposes ``token``, ``rebuild``, ``rebuild_typed`` and ``value``;
``incref``/``decref``/``get_methods`` answer as a manager would. The
method replies carry a ``Token`` whose address is ``--silent`` (a socket
the test listens on and never accepts from):

* ``token``: ``('#PROXY', (exposed, Token))``, as ``method_to_typeid`` does;
* ``rebuild``: a list holding a ``RebuildProxy(AutoProxy, Token, ...)``
  reduction: unpickling it with the stdlib builds a proxy, which connects
  to the token's address at once (to ``incref``);
* ``rebuild_typed``: the same with the ``DictProxy`` class;
* ``value``: ``('#RETURN', 1)``, for whatever object id it is called on.
"""

from __future__ import print_function

import argparse
import sys
import threading
from multiprocessing import managers
from multiprocessing.connection import Listener

sys.dont_write_bytecode = True
import _support  # noqa: E402

EXPOSED = ("token", "rebuild", "rebuild_typed", "value")


class Reduced(object):
    """Pickles as ``RebuildProxy(func, token, 'pickle', kwds)``, as a real proxy does."""

    def __init__(self, func, token, kwds):
        self.args = (func, token, "pickle", kwds)

    def __reduce__(self):
        return (managers.RebuildProxy, self.args)


def serve(conn, silent):
    def token(ident):
        return managers.Token("Bait", silent, ident)

    try:
        _, funcname, _, _ = conn.recv()
        if funcname == "create":
            conn.send(("#RETURN", ("bait", EXPOSED)))
        elif funcname in ("incref", "decref"):
            conn.send(("#RETURN", None))
        elif funcname == "get_methods":
            conn.send(("#RETURN", EXPOSED))
        elif funcname == "accept_connection":
            conn.send(("#RETURN", None))
            while True:
                _, method, _, _ = conn.recv()
                if method == "token":
                    conn.send(("#PROXY", (EXPOSED, token("evil1"))))
                elif method == "rebuild":
                    kwds = {"exposed": EXPOSED}
                    conn.send(("#RETURN", [Reduced(managers.AutoProxy, token("evil2"), kwds)]))
                elif method == "rebuild_typed":
                    proxy = Reduced(managers.DictProxy, token("evil3"), {})
                    conn.send(("#RETURN", {"inner": proxy}))
                else:
                    conn.send(("#RETURN", 1))
        else:
            conn.send(("#TRACEBACK", "unknown function"))
    except EOFError:
        pass
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    parser.add_argument("--silent", required=True, help="host:port of the silent socket")
    args = parser.parse_args()
    address, family = _support.parse_address(args.address)
    silent, _ = _support.parse_address(args.silent)
    authkey = _support.read_authkey(args.authkey_env)
    if args.watch_stdin:
        _support.exit_on_stdin_eof()
    listener = Listener(address, family=family, authkey=authkey)
    if args.ready_file:
        _support.write_ready_file(args.ready_file, _support.format_address(listener.address))
    while True:
        try:
            conn = listener.accept()
        except Exception:
            continue  # a failed handshake: keep serving
        thread = threading.Thread(target=serve, args=(conn, silent))
        thread.daemon = True
        thread.start()


if __name__ == "__main__":
    main()
