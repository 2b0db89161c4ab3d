"""A stdlib Listener patched the way FIPS builds of Python <= 3.11 are.

Usage::

    python fips_listener.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

FIPS mode disables MD5, so distributions patch ``multiprocessing.connection``
to run the legacy handshake with HMAC-SHA256: a 20-byte challenge with no
``{digest}`` prefix, and an unprefixed 32-byte SHA-256 answer to whatever
challenge the peer sends. This script replaces the two handshake functions
with such a variant (written here, from that description) and otherwise
serves like ``listener.py --mode threaded``: pairs ``(x, y)`` get ``x + y``.
"""

from __future__ import print_function

import argparse
import hmac
import os
import sys
import threading
from multiprocessing import AuthenticationError, connection
from multiprocessing.connection import Listener

sys.dont_write_bytecode = True
import _support  # noqa: E402

_CHALLENGE = b"#CHALLENGE#"
_WELCOME = b"#WELCOME#"
_FAILURE = b"#FAILURE#"


def sha256_deliver_challenge(conn, authkey):
    nonce = os.urandom(20)
    conn.send_bytes(_CHALLENGE + nonce)
    expected = hmac.new(authkey, nonce, "sha256").digest()
    answer = conn.recv_bytes(256)
    if not hmac.compare_digest(answer, expected):
        conn.send_bytes(_FAILURE)
        raise AuthenticationError("digest received was wrong")
    conn.send_bytes(_WELCOME)


def sha256_answer_challenge(conn, authkey):
    message = conn.recv_bytes(256)
    if not message.startswith(_CHALLENGE):
        raise AuthenticationError("expected a challenge")
    conn.send_bytes(hmac.new(authkey, message[len(_CHALLENGE) :], "sha256").digest())
    if conn.recv_bytes(256) != _WELCOME:
        raise AuthenticationError("digest sent was rejected")


def serve_connection(conn):
    try:
        while True:
            try:
                x, y = conn.recv()
            except (EOFError, IOError, OSError):
                return
            conn.send(x + y)
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    args = parser.parse_args()
    connection.deliver_challenge = sha256_deliver_challenge
    connection.answer_challenge = sha256_answer_challenge
    address, family = _support.parse_address(args.address)
    authkey = _support.read_authkey(args.authkey_env)
    if args.watch_stdin:
        _support.exit_on_stdin_eof()
    listener = Listener(address, family=family, authkey=authkey)
    if args.ready_file:
        _support.write_ready_file(args.ready_file, _support.format_address(listener.address))
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, IOError, OSError) as exc:
            print("accept failed: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
            continue
        thread = threading.Thread(target=serve_connection, args=(conn,))
        thread.daemon = True
        thread.start()


if __name__ == "__main__":
    main()
