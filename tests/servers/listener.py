"""A stdlib Listener server for interop tests, runnable by Python 2.7 and 3.6+.

Usage::

    python listener.py ADDRESS [--mode threaded|sequential|classic|oneshot]
                               [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]

Unlike the demo backend this is the plain standard library: the handshake runs
inside ``Listener.accept()`` and requests are read with ``conn.recv()`` and
answered with ``conn.send()``, in whatever pickle protocol this interpreter
uses by default.  A Python 2 server therefore sends protocol 2 and cannot read
protocol 3+ requests; that is the behaviour interop tests need to face.

Modes:

``threaded``
    a thread per connection; failed handshakes and bad requests are survived.
``sequential``
    one connection at a time, until it closes; otherwise like ``threaded``.
``classic``
    the loop of the ``multiprocessing`` docs: one connection at a time,
    ``x, y = conn.recv(); conn.send(x + y)``, and any error other than EOF
    ends the server (see also ``classic.py``).
``oneshot``
    like ``threaded``, but each connection is closed by the server right after
    the replies to its first request, as a manager does for its server-level
    requests.

Requests (threaded and sequential modes) are a pair ``(x, y)`` -> ``x + y``, or
a dict: ``{"op": "echo", "value": v}``, ``{"op": "sleep", "seconds": s,
"value": v}``, ``{"op": "tag", "tag": t, "delay": s}``, ``{"op": "pid"}``,
``{"op": "version"}`` (``[major, minor, micro]``), ``{"op": "raise", "type":
"ValueError", "args": [...]}``, ``{"op": "stream", "count": n, "value": v}`` and
``{"op": "close"}``.  An exception while handling is sent back as the reply.
"""

from __future__ import print_function

import argparse
import os
import signal
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener

sys.dont_write_bytecode = True  # keep Python 2 from leaving .pyc files here
import _support  # noqa: E402

try:
    import builtins
except ImportError:  # Python 2
    import __builtin__ as builtins


class CloseRequested(Exception):
    pass


def answers(request):
    """The list of replies to *request*; raising means "reply with this exception"."""
    if not isinstance(request, dict):
        x, y = request
        return [x + y]
    op = request.get("op")
    if op == "echo":
        return [request.get("value")]
    if op == "sleep":
        time.sleep(float(request["seconds"]))
        return [request.get("value", request["seconds"])]
    if op == "tag":
        time.sleep(float(request.get("delay", 0)))
        return [request.get("tag")]
    if op == "pid":
        return [os.getpid()]
    if op == "version":
        return [list(sys.version_info[:3])]
    if op == "raise":
        cls = getattr(builtins, str(request.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError("not a built-in exception: %r" % (request.get("type"),))
        return [cls(*request.get("args", []))]
    if op == "stream":
        value = request.get("value")
        return [{"seq": seq, "value": value} for seq in range(int(request["count"]))]
    if op == "close":
        raise CloseRequested()
    raise ValueError("unknown op %r" % (op,))


def serve_connection(conn, oneshot=False):
    """Answer requests on *conn* until the client closes it (or after one, *oneshot*)."""
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, IOError, OSError):
                return
            except Exception as exc:  # the frame was read but did not unpickle
                replies = [exc]
            else:
                try:
                    replies = answers(request)
                except CloseRequested:
                    return
                except Exception as exc:
                    replies = [exc]
            for reply in replies:
                try:
                    conn.send(reply)
                except (IOError, OSError):
                    return
                except Exception as exc:  # the reply did not pickle
                    conn.send(TypeError("cannot pickle the reply: %s" % (exc,)))
            if oneshot:
                return
    finally:
        conn.close()


def serve_classic(listener):
    while True:
        conn = listener.accept()
        while True:
            try:
                x, y = conn.recv()
            except EOFError:
                break
            conn.send(x + y)
        conn.close()


def serve(listener, threaded, oneshot=False):
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, IOError, OSError) as exc:
            # Wrong key, client gone during the handshake: only that one is lost.
            print("accept failed: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
            continue
        if threaded:
            thread = threading.Thread(target=serve_connection, args=(conn, oneshot))
            thread.daemon = True
            thread.start()
        else:
            serve_connection(conn)


def _raise_system_exit(signum, frame):
    raise SystemExit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    parser.add_argument(
        "--mode", choices=("threaded", "sequential", "classic", "oneshot"), default="threaded"
    )
    args = parser.parse_args()
    address, family = _support.parse_address(args.address)
    authkey = _support.read_authkey(args.authkey_env)

    signal.signal(signal.SIGTERM, _raise_system_exit)
    if args.watch_stdin:
        _support.exit_on_stdin_eof()
    backlog = 1 if args.mode == "classic" else 64
    listener = Listener(address, family=family, backlog=backlog, authkey=authkey)
    try:
        if args.ready_file:
            _support.write_ready_file(args.ready_file, _support.format_address(listener.address))
        if args.mode == "classic":
            serve_classic(listener)
        else:
            serve(listener, threaded=args.mode != "sequential", oneshot=args.mode == "oneshot")
    finally:
        try:
            listener.close()
        except Exception:  # old versions cannot unlink abstract names
            pass


if __name__ == "__main__":
    main()
