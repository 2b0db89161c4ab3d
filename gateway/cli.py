"""The ``connbridge-gateway`` command (also ``python -m gateway``).

::

    connbridge-gateway [--config PATH] [--host H] [--port P] [--demo]
                       [--log-level L] [--log-format text|json]
    connbridge-gateway openapi [PATH]

``openapi`` writes the committed OpenAPI document (``make openapi``, see
:mod:`gateway.openapi_file`) and exits.

Exit status: 0 after a clean shutdown (SIGTERM or Ctrl-C), 1 when the server
could not start (address in use, TLS files unreadable), 2 for a bad command
line or configuration, reported as ``FILE: KEY: MESSAGE`` before anything
listens.

``--demo`` starts the demo backend (:mod:`connbridge.demo`) in a child
process, on a Unix socket in a private directory with a random authkey, and
serves it as the default backend ``demo``; the child is stopped on exit.

The gateway refuses a non-loopback ``--host`` when no API keys are
configured, unless ``[gateway] allow_anonymous = true``: an open gateway on
a network would let anyone make its backends unpickle their requests.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits up to
``shutdown_grace`` seconds for requests in flight; then the app's lifespan
closes the pools (see :func:`gateway.app.create_app`).

Keepalive pings and the WebSocket message size limit belong to uvicorn's
protocol layer: :func:`uvicorn_options` turns the ``[websocket]`` settings
into its options.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import SecretStr

from connbridge.addresses import Address

from .app import create_app, package_version
from .log import configure_logging
from .openapi_file import DEFAULT_OUTPUT, write_openapi
from .settings import (
    CONFIG_ENV,
    BackendSettings,
    ConfigError,
    Settings,
    WebSocketSettings,
    load_settings,
)

__all__ = ["exposure_problem", "is_loopback_host", "main", "uvicorn_options"]

logger = logging.getLogger("connbridge.gateway")

_PROG = "connbridge-gateway"
DEMO_BACKEND = "demo"


class _UsageError(Exception):
    """A problem to report in one line, exiting with status 2."""


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine.

    ``localhost`` and loopback IPs count (as :attr:`Address.is_loopback`
    says); any other name counts as non-loopback, since it may resolve to a
    public address.
    """
    return Address("tcp", host=host.strip().strip("[]").lower()).is_loopback


def uvicorn_options(settings: WebSocketSettings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` that apply the ``[websocket]`` settings.

    uvicorn's websockets protocol refuses an oversized message from its frame
    header with 1009, before reading it, and sends the keepalive pings.
    """
    return {
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_message_bytes,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_per_message_deflate": settings.per_message_deflate,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "An HTTP gateway to Python multiprocessing.connection Listener servers: "
            "JSON in, pickled calls to the backends, JSON out."
        ),
        epilog=f"'{_PROG} openapi [PATH]' writes the example OpenAPI document and exits.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, if set)",
    )
    parser.add_argument("--host", help="address to listen on (default: [gateway] host, 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to listen on; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start the demo backend and serve it as the default backend 'demo'",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="default: [gateway] log_level, info",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="default: [gateway] log_format, text"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser


@contextlib.contextmanager
def _demo_backend(settings: Settings) -> Iterator[Settings]:
    """Start the demo backend; yield the settings with it as the default backend."""
    from connbridge.demo import REPLIES, spawn_demo_backend

    if DEMO_BACKEND in settings.backends:
        raise _UsageError(f"--demo: the configuration already has a backend named {DEMO_BACKEND!r}")
    # A directory only we can enter, so no other local user reaches the socket.
    workdir = tempfile.mkdtemp(prefix="connbridge-demo-")
    key = secrets.token_urlsafe(32)
    try:
        demo = spawn_demo_backend(f"unix:{workdir}/demo.sock", key.encode("ascii"))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise _UsageError(f"--demo: cannot start the demo backend: {exc}") from None
    try:
        backend = BackendSettings.model_validate(
            {
                "address": demo.address,
                "authkey": SecretStr(key),
                "call_timeout": 30.0,
                "replies": REPLIES,
            }
        )
        gateway = settings.gateway.model_copy(update={"default_backend": DEMO_BACKEND})
        yield settings.model_copy(
            update={"backends": {**settings.backends, DEMO_BACKEND: backend}, "gateway": gateway}
        )
    finally:
        demo.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running server.

    Everything alive after start-up (modules, the app, settings) is moved out
    of the collector's sight (``gc.freeze``), and the youngest generation is
    collected after 20,000 allocations instead of 700: each request leaves
    dozens of short-lived objects, and at 700 the collector ran several times
    per request's worth of work, which profiles of /compute showed.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


class _Server(uvicorn.Server):
    """uvicorn's server, plus one line saying where it really listens (port 0 resolved)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        _tune_gc()
        scheme = "https" if self.config.is_ssl else "http"
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                logger.info("connbridge gateway listening on %s://%s:%d", scheme, shown, port)


def _uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    gateway = settings.gateway
    have = importlib.util.find_spec
    return uvicorn.Config(
        app,
        **uvicorn_options(settings.websocket),
        host=host,
        port=port,
        http="httptools" if have("httptools") else "h11",
        loop="uvloop" if have("uvloop") else "asyncio",
        lifespan="on",
        # Our AccessLogMiddleware writes the per-request line; logging is
        # configured by configure_logging, not by uvicorn.
        access_log=False,
        log_config=None,
        server_header=False,
        ssl_certfile=os.fspath(gateway.tls_certfile) if gateway.tls_certfile else None,
        ssl_keyfile=os.fspath(gateway.tls_keyfile) if gateway.tls_keyfile else None,
        timeout_graceful_shutdown=math.ceil(gateway.shutdown_grace),
    )


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down;
    # landing here instead of the default handler lets us exit with 0.
    pass


def exposure_problem(settings: Settings, host: str) -> str | None:
    """Why serving ``settings`` on ``host`` is refused, or ``None`` if it is allowed."""
    if is_loopback_host(host) or settings.auth.keys or settings.gateway.allow_anonymous:
        return None
    return (
        f"refusing to listen on {host}: it is not a loopback address and no API keys "
        "are configured ([[auth.keys]]). Configure keys, listen on 127.0.0.1, or set "
        "allow_anonymous = true under [gateway] to serve without keys."
    )


def _serve(settings: Settings, host: str, port: int) -> int:
    problem = exposure_problem(settings, host)
    if problem is not None:
        raise _UsageError(problem)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None
    server = _Server(_uvicorn_config(app, settings, host, port))
    previous = signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # re-raised by uvicorn after a graceful Ctrl-C shutdown
    except SystemExit as exc:
        # uvicorn exits (with its own status) when binding or the lifespan fails.
        logger.error("the gateway could not start (uvicorn exit status %s)", exc.code)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1


def _write_openapi(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{_PROG} openapi",
        description="Write the OpenAPI document of the gateway built from the example settings.",
    )
    parser.add_argument("output", nargs="?", default=DEFAULT_OUTPUT, help="default: %(default)s")
    output = Path(parser.parse_args(argv).output)
    try:
        written = write_openapi(output)
    except OSError as exc:
        print(f"{_PROG}: error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {output}" if written else f"{output} is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGTERM or Ctrl-C (or run ``openapi``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["openapi"]:
        return _write_openapi(argv[1:])
    args = _parser().parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        _parser().error(f"--port must be between 0 and 65535, not {args.port}")
    remove = configure_logging(args.log_level or "info", args.log_format or "text")
    try:
        settings = load_settings(args.config)
        remove()
        remove = configure_logging(
            args.log_level or settings.gateway.log_level,
            args.log_format or settings.gateway.log_format,
        )
        host = args.host if args.host is not None else settings.gateway.host
        port = args.port if args.port is not None else settings.gateway.port
        if args.demo:
            with _demo_backend(settings) as with_demo:
                return _serve(with_demo, host, port)
        if not settings.backends:
            if args.config or os.environ.get(CONFIG_ENV):
                where = args.config or os.environ[CONFIG_ENV]
                raise _UsageError(
                    f"{where} configures no backend: add a [backends.NAME] table with an "
                    "address (or set CONNBRIDGE_BACKENDS__NAME__ADDRESS), or pass --demo"
                )
            raise _UsageError(
                f"no backends configured: pass --config PATH (or set {CONFIG_ENV}) or --demo"
            )
        return _serve(settings, host, port)
    except (ConfigError, _UsageError) as exc:
        for line in str(exc).splitlines():
            print(f"{_PROG}: error: {line}", file=sys.stderr)
        return 2
    finally:
        remove()
