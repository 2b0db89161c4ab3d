"""OpenTelemetry traces, optional: ``pip install connbridge[otel]``, turned on by ``OTEL_*``.

What a trace holds when tracing is on:

* one SERVER span per HTTP request and per WebSocket (the whole socket),
  named ``METHOD /route/template``, continuing the caller's W3C
  ``traceparent``/``tracestate`` (or whatever ``OTEL_PROPAGATORS`` names);
  ``/healthz``, ``/readyz`` and ``/metrics`` get none: probes and scrapes
  would drown the traces that matter;
* one CLIENT span per backend call (``Pool.call``, which ``POST /compute``,
  each batch entry and each ``/ws`` call go through), a child of the
  request's span, with the attributes ``connbridge.backend``,
  ``server.address`` (the address the call went to, when the pool says;
  otherwise every configured address) and ``connbridge.outcome`` (``ok``,
  ``backend_raised`` or the error's class name), and an event
  ``connection acquired`` marking the end of the wait for a pooled
  connection (the rest of the span is sending and receiving);
* ``trace_id`` and ``span_id`` in every JSON log line written while a span
  is current (the access line among them), through
  :func:`gateway.log.set_trace_fields`.

When it is on: :func:`tracing_wanted` reads the standard variables. An
exporter must be asked for: ``OTEL_TRACES_EXPORTER=otlp``, or an OTLP
endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` and
``OTEL_TRACES_EXPORTER=none`` turn it off whatever else is set. A gateway
never starts sending traces to a default endpoint just because the extra is
installed. Everything else (service name, resource attributes, endpoint,
headers, compression, timeouts, batching, sampling) is the SDK's own
handling of its variables: exporter OTLP over HTTP/protobuf.

Zero cost when off: this module imports nothing of OpenTelemetry at import
time, :func:`install_tracing` is only called when :func:`tracing_wanted`
says so, and it adds a middleware and wraps each pool's ``call`` on the
instance; when off there is no middleware, no wrapper and no check on the
request path. With the extra missing, tracing asked for logs one warning and
the gateway serves without it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import log
from .context import request_context

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from connbridge.pool import Pool

    from .state import GatewayState

__all__ = ["UNTRACED_PATHS", "Tracing", "install_tracing", "tracing_wanted"]

logger = logging.getLogger("connbridge.gateway")

#: Paths that get no span: probes and scrapes.
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})

_SERVICE_NAME: Final = "connbridge-gateway"
_SCOPE: Final = "connbridge.gateway"


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables in ``environ`` ask for traces (see the module doc)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }
    if "none" in exporters:
        return False
    if exporters - {"otlp"}:
        logger.warning(
            "OTEL_TRACES_EXPORTER=%s: the gateway exports traces with OTLP only; tracing is off",
            environ["OTEL_TRACES_EXPORTER"],
        )
        return False
    return bool(
        exporters
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """The tracer provider of one app; :meth:`instrument` its pools, :meth:`close` at the end."""

    def __init__(self, provider: TracerProvider, state: GatewayState) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(_SCOPE)
        self.state = state

    def instrument(self) -> None:
        """Give each running pool's ``call`` a CLIENT span (after the pools are created)."""
        for name, pool in self.state.pools().items():
            _trace_pool(self.tracer, name, pool)

    def close(self) -> None:
        """Export the spans still buffered and stop the exporter."""
        self.provider.shutdown()


def install_tracing(
    app: FastAPI, state: GatewayState, environ: Mapping[str, str]
) -> Tracing | None:
    """Set tracing up for ``app``: the provider, the middleware and the log fields.

    Returns ``None`` (after one warning) when the ``otel`` extra is not installed.
    Call it only when :func:`tracing_wanted` is true.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        logger.warning(
            "tracing is asked for by the OTEL_* environment, but %s; install "
            "connbridge[otel] to export traces. Serving without tracing.",
            exc,
        )
        return None
    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    # attributes given here would override them, so the default goes in only
    # when neither names the service.
    resource = Resource.create({} if named else {SERVICE_NAME: _SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracing = Tracing(provider, state)
    app.add_middleware(TracingMiddleware, tracer=tracing.tracer)
    log.set_trace_fields(_trace_fields)
    logger.info("tracing on: OTLP exporter, service %s", resource.attributes.get(SERVICE_NAME))
    return tracing


def _trace_fields() -> dict[str, str] | None:
    """``trace_id`` and ``span_id`` of the current span, in hex, if one is recording."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


def _headers(scope: Scope) -> dict[str, str]:
    # The propagator reads a mapping with lower-case names; repeated headers
    # are joined as HTTP allows (tracestate may come in several lines).
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


class TracingMiddleware:
    """The SERVER span of each request, continuing the caller's trace (the outermost of ours).

    It wraps :class:`~gateway.log.AccessLogMiddleware`, so the access line is
    written while the span is current and carries its ids; the route template
    and backend are read back from the request's context when the app is done.
    """

    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.app = app
        self.tracer = tracer
        self._extract = propagate.extract
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._status_class = Status
        self._error_code = StatusCode.ERROR

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if kind == "http" else "GET"
        path = scope["path"]
        parent = self._extract(_headers(scope))
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            f"{method} {path}",
            context=parent,
            kind=self._server,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                self._finish(span, scope, method, status)

    def _finish(self, span: Span, scope: Scope, method: str, status: int) -> None:
        context = request_context(scope)
        route = context.route if context is not None else None
        if route is None:
            matched = scope.get("route")
            route = getattr(matched, "path", None)
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        if context is not None:
            span.set_attribute("connbridge.request_id", context.request_id)
            if context.backend:
                span.set_attribute("connbridge.backend", context.backend)
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(self._status_class(self._error_code, f"HTTP {status}"))


def _trace_pool(tracer: Tracer, backend: str, pool: Pool) -> None:
    """Shadow ``pool.call`` (and its connection wait) on the instance with traced versions."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    configured = ", ".join(str(a) for a in pool.addresses)
    call = pool.call
    get_current_span = trace.get_current_span

    @functools.wraps(call)
    async def traced_call(obj: object, *, timeout: float | None = None) -> object:
        with tracer.start_as_current_span(
            f"call {backend}",
            kind=SpanKind.CLIENT,
            attributes={"connbridge.backend": backend, "server.address": configured},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call(obj, timeout=timeout)
            except BaseException as exc:
                outcome = type(exc).__name__
                span.set_attribute("connbridge.outcome", outcome)
                span.set_status(Status(StatusCode.ERROR, outcome))
                span.record_exception(exc, escaped=True)
                raise
            outcome = "backend_raised" if isinstance(result, BaseException) else "ok"
            span.set_attribute("connbridge.outcome", outcome)
            return result

    pool.call = traced_call  # type: ignore[method-assign]

    # The wait for a pooled connection ends when _acquire returns its holder,
    # which knows the address chosen: an event on the call's span, and the
    # address made exact. (Pipelined pools pick a slot elsewhere and keep the
    # configured addresses.)
    acquire: Callable[[float, float], Awaitable[Any]] | None = getattr(pool, "_acquire", None)
    if acquire is None:
        return

    @functools.wraps(acquire)
    async def traced_acquire(deadline: float, budget: float) -> Any:
        started = time.perf_counter()
        holder = await acquire(deadline, budget)
        span = get_current_span()
        # Only a call's span: a lease (Pool.connection) waits here too, under
        # the request's SERVER span, which must not take the backend's address.
        if span.is_recording() and getattr(span, "kind", None) is SpanKind.CLIENT:
            waited_ms = round((time.perf_counter() - started) * 1000, 3)
            replica = getattr(holder, "replica", None)
            address = getattr(replica, "address", None)
            attributes: dict[str, str | float] = {"connbridge.pool.wait_ms": waited_ms}
            if address is not None:
                span.set_attribute("server.address", str(address))
                attributes["server.address"] = str(address)
            span.add_event("connection acquired", attributes)
        return holder

    pool._acquire = traced_acquire  # type: ignore[method-assign]
