"""A Listener that dies in the middle of its first handshake (test helper).

Usage (the command line of the other scripts here)::

    python dies_in_handshake.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

It accepts one connection, sends the stdlib's challenge, reads the client's
answer and then kills itself with SIGKILL, before it says welcome: the
client's handshake ends with EOF, as when a backend is killed mid-handshake.
Such a handshake failed because the peer went away, not because of a key.
"""

from __future__ import print_function

import argparse
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection

sys.dont_write_bytecode = True
import _support  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    args = parser.parse_args()
    address, family = _support.parse_address(args.address)
    _support.read_authkey(args.authkey_env)  # the key is never checked: it dies first
    if args.watch_stdin:
        _support.exit_on_stdin_eof()
    server = socket.socket(getattr(socket, family))
    server.bind(address)
    server.listen(1)
    if args.ready_file:
        _support.write_ready_file(args.ready_file, _support.format_address(server.getsockname()))
    sock, _ = server.accept()
    conn = Connection(sock.detach())
    # The legacy (HMAC-MD5) challenge, which every client version answers.
    conn.send_bytes(b"#CHALLENGE#" + os.urandom(20))
    conn.recv_bytes(256)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
