"""An ``asyncio.Queue`` told its loop up front, so that a wait costs no system call.

On Python 3.11 every ``asyncio.get_running_loop()`` (and the private
``_get_running_loop()``) checks the process id with a ``getpid()`` system
call, to notice a fork. ``asyncio.Queue`` asks for the running loop each time
a ``get`` or a ``put`` has to wait, to create the future it waits on: on a
WebSocket that is about one system call per batch of messages, for the
writer's queue and for the protocol's queue of received messages alike.
:class:`LoopQueue` takes the loop when it is created and answers with it.
It is only ever used from that loop, as an ``asyncio.Queue`` must be.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["LoopQueue"]

T = TypeVar("T")


class LoopQueue(asyncio.Queue[T]):
    """An ``asyncio.Queue`` of at most ``maxsize`` items (0: no bound), bound to ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._bound_loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # asyncio's own asks for the running loop first, to bind the queue to it.
        return self._bound_loop
