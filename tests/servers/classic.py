"""The classic Listener server from the ``multiprocessing`` docs, fragile on purpose.

Usage::

    python classic.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

Runs on Python 2.7 and 3.6+.  It serves one connection at a time and answers
each pair ``(x, y)`` with ``x + y``.  A clean EOF ends the connection; any other
error (a failed handshake, a request that is not a pair, ``x + y`` failing, a
reset) ends the whole process with a traceback.  That is the point: pool tests
use it to show that the gateway never sends what kills such a server, and the
fixtures prove they notice when it does die.  Soak tests get unique replies
from ``(unique_int, 0)``.

``--slow-floats``: when ``y`` is a float, sleep ``y`` seconds before answering,
so that pool tests can make calls time out or cancel them mid-call.
``--slow-handshake S``: in each handshake, after the server has welcomed the
client, wait ``S`` seconds before answering the client's own challenge, so
that tests can stop a gateway while a handshake is in the middle. The server
stays exactly as fragile either way.
"""

from __future__ import print_function

import argparse
import sys
import time
from multiprocessing.connection import Listener

sys.dont_write_bytecode = True  # keep Python 2 from leaving .pyc files here
import _support  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    parser.add_argument("--slow-floats", action="store_true")
    parser.add_argument("--slow-handshake", type=float, default=0.0)
    parser.add_argument("--slow-close", type=float, default=0.0)
    args = parser.parse_args()
    if args.slow_handshake:
        _slow_down_handshakes(args.slow_handshake)
    address, family = _support.parse_address(args.address)
    authkey = _support.read_authkey(args.authkey_env)
    if args.watch_stdin:
        _support.exit_on_stdin_eof()

    serv = Listener(address, family=family, authkey=authkey)
    if args.ready_file:
        _support.write_ready_file(args.ready_file, _support.format_address(serv.address))

    # From here on, the classic example verbatim.
    while True:
        conn = serv.accept()
        while True:
            try:
                x, y = conn.recv()
            except EOFError:
                time.sleep(args.slow_close)
                break
            if args.slow_floats and isinstance(y, float):
                time.sleep(y)
            conn.send(x + y)
        conn.close()


def _slow_down_handshakes(seconds):
    import multiprocessing.connection as mpc

    answer = mpc.answer_challenge

    def slow_answer(connection, authkey):
        time.sleep(seconds)
        return answer(connection, authkey)

    mpc.answer_challenge = slow_answer


if __name__ == "__main__":
    main()
