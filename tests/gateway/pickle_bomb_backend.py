"""A Listener server that answers with pickle bombs (test helper).

Usage (the command line of the scripts in tests/servers)::

    python pickle_bomb_backend.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

A pair ``(x, y)`` is answered with ``x + y``; ``{"bomb": NAME}`` with the
bytes of the bomb of that name from ``tests/connbridge/pickle_bombs.py``
(built once, then sent as they are: a reply frame, not a pickle of them).
"""

import argparse
import os
import pickle
import signal
import sys
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "connbridge"))

from pickle_bombs import GATEWAY_BOMBS as BOMBS

_BUILT = {}
_LOCK = threading.Lock()


def _bomb(name):
    with _LOCK:
        if name not in _BUILT:
            _BUILT[name] = BOMBS[name]()
        return _BUILT[name]


def _address(text):
    if text.startswith("unix:"):
        return text[len("unix:") :], "AF_UNIX"
    host, _, port = text.rpartition(":")
    return (host, int(port)), "AF_INET"


def _format(address):
    if isinstance(address, tuple):
        return "{}:{}".format(*address[:2])
    return "unix:" + address


def _serve(conn):
    with conn:
        while True:
            try:
                request = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if isinstance(request, dict):
                conn.send_bytes(_bomb(request["bomb"]))
            else:
                x, y = request
                conn.send(x + y)


def _watch_stdin():
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--authkey-env")
    parser.add_argument("--ready-file")
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()
    authkey = os.environb[args.authkey_env.encode()] if args.authkey_env else None
    address, family = _address(args.address)
    listener = Listener(address, family=family, authkey=authkey)
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, daemon=True).start()
    for name in BOMBS:
        _bomb(name)  # before saying ready: the test's clock starts then
    if args.ready_file:
        with open(args.ready_file + ".partial", "w") as f:
            f.write(_format(listener.address) + "\n")
        os.replace(args.ready_file + ".partial", args.ready_file)
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, OSError) as exc:
            print("accept failed:", exc, file=sys.stderr)
            continue
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
