"""The WebSocket side of the gateway: the socket plumbing and the two protocols.

:mod:`~gateway.websocket.link` (a bounded outbox, the tasks of one socket and
how it ends), :mod:`~gateway.websocket.calls` (the ``/ws`` calls protocol) and
:mod:`~gateway.websocket.session` (the ``/ws/session/{backend}`` bridge). The
routes, admission and counters are in :mod:`gateway.routes.ws`.
"""
