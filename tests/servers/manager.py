"""A real ``multiprocessing.managers`` server, as the Python docs build one.

Usage::

    python manager.py ADDRESS [--authkey-env VAR] [--ready-file PATH] [--watch-stdin]
                      [--kind base|sync]

Runs on Python 3.8+.  ``--kind base`` (the default) is a ``BaseManager``
with registered callables:

* ``get_queue`` and ``get_results``: two shared ``queue.Queue`` objects (every
  create returns the same queue, as in the docs' ``QueueManager``);
* ``Counter``: a new :class:`Counter` per create (``Counter(start)``; a
  negative ``start`` makes the constructor raise, so ``create`` fails with
  ``#TRACEBACK``); its ``child()`` returns a new ``Counter``, shared as a
  ``Child`` through ``method_to_typeid`` (a ``#PROXY`` reply);
* ``get_store``: a shared dict whose ``get``/``put`` may hold other proxies;
* ``SlowCounter``: a :class:`Counter` made after ``SlowCounter(seconds)``
  seconds, for a create that runs out of time.

``--kind sync`` is a ``SyncManager`` (``dict``, ``list``, ``Queue``,
``Namespace`` ...) with ``get_queue`` registered as well.
"""

from __future__ import print_function

import argparse
import queue
import sys
import time
from multiprocessing.managers import BaseManager, SyncManager

sys.dont_write_bytecode = True
import _support  # noqa: E402

SHARED_QUEUE = queue.Queue()
RESULTS = queue.Queue()
STORE = {}


class Counter(object):
    """A counter that can fail in every way a method can."""

    def __init__(self, start=0):
        if start < 0:
            raise ValueError("a counter starts at 0 or more")
        self.count = start

    def incr(self, by=1):
        self.count += by
        return self.count

    def value(self):
        return self.count

    def echo(self, value):
        return value

    def fail(self, message="no"):
        raise ValueError(message, 42)

    def lookup(self, key):
        return {"a": 1}[key]

    def unpicklable(self):
        return lambda: None

    def child(self):
        return Counter(self.count * 10)


class Store(object):
    def put(self, key, value):
        STORE[key] = value

    def get(self, key):
        return STORE.get(key)


def _queue():
    return SHARED_QUEUE


def _results():
    return RESULTS


_STORE = Store()


def _store():
    return _STORE


def _slow_counter(seconds=0):
    time.sleep(seconds)
    return Counter()


class QueueManager(BaseManager):
    pass


class Synced(SyncManager):
    pass


QueueManager.register("get_queue", callable=_queue)
QueueManager.register("get_results", callable=_results)
QueueManager.register(
    "Counter",
    callable=Counter,
    exposed=("incr", "value", "echo", "fail", "lookup", "unpicklable"),
    method_to_typeid={"child": "Child"},
)
# No callable: the server wraps the object a method returned (create_method=False).
QueueManager.register(
    "Child",
    exposed=("incr", "value", "echo", "fail", "lookup", "unpicklable"),
    method_to_typeid={"child": "Child"},
    create_method=False,
)
QueueManager.register("get_store", callable=_store)
QueueManager.register(
    "SlowCounter",
    callable=_slow_counter,
    exposed=("incr", "value", "echo", "fail", "lookup", "unpicklable"),
)
Synced.register("get_queue", callable=_queue)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _support.add_common_arguments(parser)
    parser.add_argument("--kind", choices=("base", "sync"), default="base")
    args = parser.parse_args()
    address, _family = _support.parse_address(args.address)
    authkey = _support.read_authkey(args.authkey_env)
    if args.watch_stdin:
        _support.exit_on_stdin_eof()
    cls = Synced if args.kind == "sync" else QueueManager
    manager = cls(address=address, authkey=authkey)
    server = manager.get_server()
    if args.ready_file:
        _support.write_ready_file(args.ready_file, _support.format_address(server.address))
    server.serve_forever()


if __name__ == "__main__":
    main()
