"""The gateway's side of uvicorn: per-client bounds that only the server's protocols can hold.

:mod:`~gateway.server.limits` (the shared count of client connections and
WebSockets, and which connection to close for a new one),
:mod:`~gateway.server.http_protocol` (header and keep-alive timers, the
header size limit, lingering close), :mod:`~gateway.server.websocket_protocol`
(a bounded write buffer, bounded closes, the drain signal, coalesced
writes), :mod:`~gateway.server.loop_queue` (a queue that waits without a
system call) and
:mod:`~gateway.server.descriptors` (the descriptor limit at start-up).
:func:`gateway.cli.server_options` hands them to ``uvicorn.Config``.
"""
