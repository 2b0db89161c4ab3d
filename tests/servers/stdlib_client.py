"""Talk to a Listener with the stdlib ``Client`` and print the replies as JSON lines.

Usage::

    python stdlib_client.py [--authkey-env VAR] [--protocol N] [--bytes]
                            [--replies N] [--timeout S] ADDRESS REQUEST...

(options first: ADDRESS and the REQUESTs are one run of positional arguments).

Runs on Python 2.7 and 3.6+; used to test our asyncio server against every
version's stdlib client.  Each REQUEST is a JSON value; ``{"__tuple__": [...]}``
makes a tuple and ``{"__bytes__": "<hex>"}`` a bytes object.  It is sent with
``conn.send()`` (the interpreter's default pickle protocol) or, with
``--protocol N``, pickled with protocol N and sent with ``send_bytes()``.
With ``--bytes``, each REQUEST is a string sent as raw UTF-8 bytes with
``send_bytes()`` and each reply is read with ``recv_bytes()``.

Output, one line per reply, in order: ``{"reply": VALUE}``, where VALUE uses
the same tuple/bytes notation plus ``{"__exception__": "ValueError", "args":
[...]}`` for exception objects, ``{"__set__": [...]}`` for sets and
``{"__repr__": "..."}`` for anything else.  A failure prints ``{"error":
{"type": ..., "message": ...}}`` and exits with status 1.
"""

from __future__ import print_function

import argparse
import binascii
import json
import pickle
import sys

sys.dont_write_bytecode = True  # keep Python 2 from leaving .pyc files here
import _support  # noqa: E402

try:
    text_type = unicode  # Python 2
except NameError:
    text_type = str


def decode_request(value):
    if isinstance(value, dict):
        if list(value) == ["__tuple__"]:
            return tuple(decode_request(v) for v in value["__tuple__"])
        if list(value) == ["__bytes__"]:
            return binascii.unhexlify(value["__bytes__"].encode("ascii"))
        return dict((k, decode_request(v)) for k, v in value.items())
    if isinstance(value, list):
        return [decode_request(v) for v in value]
    return value


def encode_reply(value):
    if value is None or isinstance(value, (bool, int, float, text_type)):
        return value
    if isinstance(value, str):  # Python 2 byte string: show it as text
        return value.decode("utf-8", "replace")
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": binascii.hexlify(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_reply(v) for v in value]}
    if isinstance(value, list):
        return [encode_reply(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted((encode_reply(v) for v in value), key=repr)}
    if isinstance(value, dict):
        return dict((text_type(k), encode_reply(v)) for k, v in value.items())
    if isinstance(value, BaseException):
        return {"__exception__": type(value).__name__, "args": encode_reply(list(value.args))}
    if sys.version_info[0] == 2 and isinstance(value, long):  # noqa: F821
        return value
    return {"__repr__": repr(value)}


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def fail(exc):
    emit({"error": {"type": type(exc).__name__, "message": str(exc)}})
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--authkey-env", metavar="VAR")
    parser.add_argument("--protocol", type=int, help="pickle protocol for requests")
    parser.add_argument("--bytes", action="store_true", help="send raw bytes, not pickles")
    parser.add_argument("--replies", type=int, default=1, help="replies to read per request")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per reply")
    parser.add_argument("requests", nargs="*", metavar="REQUEST")
    args = parser.parse_args()
    address, family = _support.parse_address(args.address)
    authkey = _support.read_authkey(args.authkey_env)

    try:
        conn = _support.connect(address, family, authkey)
    except Exception as exc:
        fail(exc)
    try:
        for text in args.requests:
            if args.bytes:
                conn.send_bytes(text.encode("utf-8") if isinstance(text, text_type) else text)
            else:
                request = decode_request(json.loads(text))
                if args.protocol is None:
                    conn.send(request)
                else:
                    conn.send_bytes(pickle.dumps(request, args.protocol))
            for _ in range(args.replies):
                if not conn.poll(args.timeout):
                    raise RuntimeError("no reply within %g seconds" % (args.timeout,))
                if args.bytes:
                    emit({"reply": encode_reply(bytearray(conn.recv_bytes()))})
                else:
                    emit({"reply": encode_reply(conn.recv())})
    except Exception as exc:
        fail(exc)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
