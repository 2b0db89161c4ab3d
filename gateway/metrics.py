"""Prometheus metrics of one gateway app, in a registry of its own.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so two
apps in one process (tests, embedding) never share or double-register
series. The names are fixed (dashboards are written against them):

=============================================  =========  ===============================
``connbridge_requests_total``                  counter    route, backend, status
``connbridge_request_duration_seconds``        histogram  route, backend
``connbridge_pool_connections``                gauge      backend, state (idle, in_use)
``connbridge_pool_waiters``                    gauge      backend
``connbridge_pool_calls_total``                counter    backend
``connbridge_pool_errors_total``               counter    backend, kind
``connbridge_websocket_connections``           gauge      endpoint
``connbridge_streams``                         gauge      backend (open ``/stream`` responses)
``connbridge_stream_ends_total``               counter    backend, reason
=============================================  =========  ===============================

``route`` is the route template (``/compute``, ``/backends/{name}/compute``),
never the raw path, and ``<unmatched>`` for paths with no route, so a
scanner cannot create unbounded series. The pool series are read from
:meth:`connbridge.pool.Pool.stats` at scrape time by a custom collector.

A request that never reached a backend (no API key, a key that may not use
the backend it named, an unknown backend, a body that names none, ``/healthz``,
``/metrics``, an unmatched path) is counted with ``backend="-"``
(:data:`NO_BACKEND`), the same mark as in the access log. Not the name it
asked for: a name that is not configured would make a series per name a
scanner tries, and a refused request was never the backend's traffic (its
error ratio would count callers' mistakes). Not ``""``: in Prometheus an
empty label is no label, so such requests would merge into label-less
selectors and show with a blank legend; ``-`` cannot be a backend's name
(a name starts with a letter or a digit), so it never hides one.

A key scoped to some backends sees only theirs: :meth:`GatewayMetrics.render`
given a scope leaves out every sample whose ``backend`` label names another
backend (samples of no backend, ``-``, stay: they name none, so a scoped key
learns no name from them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connbridge.pool import Pool

__all__ = ["CONTENT_TYPE", "NO_BACKEND", "GatewayMetrics"]

#: Media type of :meth:`GatewayMetrics.render`.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: The ``backend`` label of a request that reached no backend (see the module docstring).
NO_BACKEND: Final = "-"

# Calls to a local backend take well under a millisecond; the default
# buckets of prometheus-client start at 5 ms.
_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _PoolCollector(Collector):
    """Reads the pools' statistics when Prometheus scrapes."""

    def __init__(self, pools: Callable[[], Mapping[str, Pool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        connections = GaugeMetricFamily(
            "connbridge_pool_connections",
            "Open connections of a backend's pool, by state.",
            labels=["backend", "state"],
        )
        waiters = GaugeMetricFamily(
            "connbridge_pool_waiters",
            "Callers waiting for a connection.",
            labels=["backend"],
        )
        calls = CounterMetricFamily(
            "connbridge_pool_calls", "Calls made through the pool.", labels=["backend"]
        )
        errors = CounterMetricFamily(
            "connbridge_pool_errors",
            "Errors seen by the pool, by kind.",
            labels=["backend", "kind"],
        )
        closed = CounterMetricFamily(
            "connbridge_pool_closed",
            "Pooled connections closed, by reason (idle, lifetime, single_use, stray_reply, ...).",
            labels=["backend", "reason"],
        )
        violations = CounterMetricFamily(
            "connbridge_pool_reply_violations",
            'Frames a backend declared replies = "one" sent while nobody asked; '
            "each stops reuse of that address's connections.",
            labels=["backend"],
        )
        discarded = CounterMetricFamily(
            "connbridge_pool_discarded_replies",
            "Replies dropped unread because they came after a connection's close began "
            '(the later replies of a backend declared replies = "many", late stray ones).',
            labels=["backend"],
        )
        for name, pool in self._pools().items():
            stats = pool.stats()
            for state in ("idle", "in_use", "draining"):
                connections.add_metric([name, state], float(stats[state]))
            waiters.add_metric([name], float(stats["waiters"]))
            calls.add_metric([name], float(stats["calls"]))
            for kind, count in stats["errors"].items():
                errors.add_metric([name, kind], float(count))
            for reason, count in stats["closed"].items():
                closed.add_metric([name, reason], float(count))
            violations.add_metric([name], float(stats["violations"]))
            discarded.add_metric([name], float(stats["discarded_replies"]))
        yield connections
        yield waiters
        yield calls
        yield errors
        yield closed
        yield violations
        yield discarded


class GatewayMetrics:
    """The metrics of one app; :meth:`render` gives the Prometheus text."""

    def __init__(self, pools: Callable[[], Mapping[str, Pool]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "connbridge_requests",
            "HTTP requests, by route template, backend and status.",
            ["route", "backend", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "connbridge_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "backend"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        #: For the WebSocket routes: ``.labels(endpoint=...).inc()`` / ``.dec()``.
        self.websocket_connections = Gauge(
            "connbridge_websocket_connections",
            "Open WebSocket connections, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        #: For ``/stream``: streams open, and streams ended by reason (``sentinel``,
        #: ``count``, ``closed``, ``idle``, ``error``, ``gone``: the client left).
        self.streams = Gauge(
            "connbridge_streams",
            "Open /stream responses, by backend.",
            ["backend"],
            registry=self.registry,
        )
        self.stream_ends = Counter(
            "connbridge_stream_ends",
            "Streams ended, by backend and reason (sentinel, count, closed, idle, error, gone).",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pools))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, backend: str | None, status: int, seconds: float) -> None:
        """Count one answered request and its duration (``backend`` ``None`` or ``""``: none)."""
        backend = backend or NO_BACKEND
        key = (route, backend, status)
        children = self._children.get(key)
        if children is None:
            # labels() validates and looks the labels up under a lock on every
            # call; the set of routes, backends and statuses is small, so the
            # children are kept.
            children = (
                self.requests.labels(route, backend, str(status)),
                self.duration.labels(route, backend),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self, backends: AbstractSet[str] | None = None) -> bytes:
        """The registry in the Prometheus text format; only ``backends``' series if given."""
        if backends is None:
            return generate_latest(self.registry)
        return generate_latest(_Scoped(self.registry, backends))


class _Scoped:
    """The metrics of a registry without the samples of backends outside a scope."""

    def __init__(self, registry: CollectorRegistry, backends: AbstractSet[str]) -> None:
        self._registry = registry
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        allowed = self._backends
        for metric in self._registry.collect():
            # Each collect() makes new Metric objects: trimming one changes nothing else.
            metric.samples = [
                sample
                for sample in metric.samples
                if (backend := sample.labels.get("backend", NO_BACKEND)) == NO_BACKEND
                or backend in allowed
            ]
            yield metric
