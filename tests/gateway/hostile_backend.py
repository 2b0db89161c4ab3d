"""A Listener server that answers with what a gateway must refuse (test helper).

Usage (the command line of the scripts in tests/servers)::

    python hostile_backend.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

A pair ``(x, y)`` is answered with ``x + y``; a dict ``{"op": ...}`` with:

``global``      a pickle naming ``posixpath.join`` (the allowlist refuses it)
``not-pickle``  bytes that are not a pickle
``huge-frame``  a frame header announcing 1 GiB (more than any sane max_frame)
``surrogate``   a string with a lone surrogate (no JSON form)
``shared``      one 512 KiB string referenced 2,000 times (512 KiB pickled, 1 GB as JSON)
``shared-exception``  a ValueError whose 200 arguments are one 512 KiB string (100 MiB as JSON)
``close``       no reply: the connection is closed mid-call
``series``      ``{"op": "series", "steps": [...]}``: one reply per step, in order, where
                a step is ``"ok"`` (the string ``"ok"``), ``"raise"`` (a ValueError) or
                one of the ops above; ``"close"`` closes the connection (a stream's end)
"""

import argparse
import os
import pickle
import signal
import struct
import sys
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener


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
            op = request.get("op") if isinstance(request, dict) else None
            if op == "series":
                for step in request["steps"]:
                    if not _answer(conn, {"op": step}, step):
                        return
            elif not _answer(conn, request, op):
                return


def _answer(conn, request, op):
    """Send the answer to one request; False when the connection must close."""
    if op == "ok":
        conn.send("ok")
    elif op == "raise":
        conn.send(ValueError("boom"))
    elif op == "global":
        conn.send_bytes(pickle.dumps(os.path.join))
    elif op == "not-pickle":
        conn.send_bytes(b"this is not a pickle")
    elif op == "huge-frame":
        os.write(conn.fileno(), struct.pack("!i", 1 << 30) + b"x" * 16)
        return False
    elif op == "surrogate":
        conn.send("lone \ud800 surrogate")
    elif op == "shared":
        conn.send(["x" * (1 << 19)] * 2000)
    elif op == "shared-exception":
        conn.send(ValueError(*["x" * (1 << 19)] * 200))
    elif op == "close":
        return False
    else:
        x, y = request
        conn.send(x + y)
    return True


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
