"""What one gateway app holds while it runs: settings, keys, backends and their pools.

:class:`GatewayState` is built by :func:`gateway.app.create_app` (nothing
here runs at import time); its pools are opened by the app's lifespan
(:meth:`GatewayState.start`) and closed by it (:meth:`GatewayState.close`).
Routes get it through the ``State`` dependency of :mod:`gateway.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
import jsonschema.protocols

from connbridge.manager import ManagerClient
from connbridge.pool import Pool, PoolSettings

from .auth import KeyRing, Principal
from .metrics import GatewayMetrics
from .objects import ObjectTable
from .problems import Forbidden, InvalidRequest, UnknownBackend, WrongBackendKind, pointer
from .settings import BackendSettings, Settings, read_authkeys

__all__ = ["RESULT_MAX_DEPTH", "Backend", "GatewayState", "pool_settings"]

logger = logging.getLogger("connbridge.gateway")

#: Deepest result nesting handed to orjson: its limit (254) less the envelope
#: of a batch response (``{"results": [{"result": ...}]}``).
RESULT_MAX_DEPTH = 250


def pool_settings(backend: BackendSettings, *, close_grace: float) -> PoolSettings:
    """The pool's settings for one ``[backends.NAME]`` table and ``[gateway] shutdown_grace``."""
    return replace(backend.pool, close_grace=max(close_grace, 0.001))


@dataclass(eq=False, slots=True)
class Backend:
    """One configured backend: its settings, schema validator and (once started) pool."""

    name: str
    settings: BackendSettings
    validator: jsonschema.protocols.Validator | None
    authkey: bytes | None = field(repr=False)
    #: The pool of calls; for a manager backend, the pool of its method calls.
    pool: Pool | None = None
    #: Manager backends, once started: the client and the objects held.
    manager: ManagerClient | None = None
    objects: ObjectTable | None = None

    @property
    def timeout(self) -> float:
        return self.settings.pool.call_timeout

    @property
    def is_manager(self) -> bool:
        return self.settings.kind == "manager"

    def refuse_payloads(self, *, pointer: str | None = None) -> None:
        """Raise :class:`WrongBackendKind` if this backend takes no payloads (a manager)."""
        if self.is_manager:
            raise WrongBackendKind(
                f"backend {self.name!r} is a manager: it takes no payloads; use its objects "
                f"(POST /backends/{self.name}/objects, then "
                f"POST /backends/{self.name}/objects/{{id}}/{{method}})",
                pointer=pointer,
            )

    def running_objects(self) -> ObjectTable:
        """The objects held on this manager backend.

        Raises:
            WrongBackendKind: the backend is not a manager.
            RuntimeError: the app's lifespan has not started it.
        """
        if not self.is_manager:
            raise WrongBackendKind(
                f"backend {self.name!r} is a Listener, not a manager: it has no objects; "
                "call it with POST /compute"
            )
        if self.objects is None:
            raise RuntimeError(f"backend {self.name}: the app has not started")
        return self.objects

    def running_pool(self) -> Pool:
        """The pool; raises ``RuntimeError`` before the app's lifespan started it."""
        if self.pool is None:
            raise RuntimeError(f"backend {self.name}: the app has not started")
        return self.pool


class GatewayState:
    """Settings, API keys, backends and metrics of one app."""

    def __init__(self, settings: Settings) -> None:
        """Prepare the backends (read authkeys, compile schemas); open nothing.

        Raises:
            ConfigError: an authkey cannot be read, or ``default_backend``
                names no backend.
        """
        self.settings = settings
        self.keys = KeyRing(settings.auth.keys)
        self.default_backend = settings.default_backend
        authkeys = read_authkeys(settings)
        self.backends: dict[str, Backend] = {}
        for name, backend in settings.backends.items():
            validator = None
            if backend.payload_schema is not None:
                cls = jsonschema.validators.validator_for(backend.payload_schema)
                validator = cls(backend.payload_schema)
            self.backends[name] = Backend(name, backend, validator, authkeys[name])
        self.metrics = GatewayMetrics(self.pools)
        self.max_depth = settings.gateway.max_depth
        self.result_max_depth = min(settings.gateway.max_depth, RESULT_MAX_DEPTH)
        self.max_result_bytes = settings.gateway.max_result_bytes

    def pools(self) -> dict[str, Pool]:
        """The running pools by backend name (empty before start)."""
        return {name: b.pool for name, b in self.backends.items() if b.pool is not None}

    async def start(self) -> None:
        """Create and start one pool per backend (a backend that is down is no error)."""
        grace = self.settings.gateway.shutdown_grace
        starting = []
        for backend in self.backends.values():
            settings = pool_settings(backend.settings, close_grace=grace)
            addresses = list(backend.settings.address)
            if backend.is_manager:
                client = ManagerClient(
                    addresses, authkey=backend.authkey, settings=settings, name=backend.name
                )
                backend.manager, backend.pool = client, client.methods
                backend.objects = ObjectTable(
                    backend.name,
                    client,
                    typeids=backend.settings.typeids or (),
                    methods=backend.settings.methods,
                    object_ttl=backend.settings.object_ttl,
                    max_objects=backend.settings.max_objects,
                )
                backend.objects.start()
                starting.append(client.start())
            else:
                backend.pool = Pool(
                    addresses, authkey=backend.authkey, settings=settings, name=backend.name
                )
                starting.append(backend.pool.start())
        await asyncio.gather(*starting)
        for name, pool in self.pools().items():
            logger.info(
                "backend %s: %s (%s)",
                name,
                ", ".join(str(a) for a in pool.addresses),
                pool.health()["status"],
            )

    async def close(self) -> None:
        """Close every pool, letting calls in flight finish within ``shutdown_grace``."""
        grace = self.settings.gateway.shutdown_grace
        # Objects first: their references go back while the pools still work.
        tables = [b.objects for b in self.backends.values() if b.objects is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace, 0.001)):
                await asyncio.gather(*(t.close() for t in tables), return_exceptions=True)
        closing = [
            b.manager.close(grace) if b.manager is not None else b.pool.close(grace)
            for b in self.backends.values()
            if b.pool is not None
        ]
        await asyncio.gather(*closing, return_exceptions=True)

    def backend_for(
        self, principal: Principal, name: str | None, *, at: Sequence[str | int] | None = ()
    ) -> Backend:
        """The backend a caller asks for (``None``: the default), checked against its scope.

        A name outside the caller's scope is refused before its existence is
        checked, so a scoped key cannot probe which backends exist. ``at`` is
        where the call object sits in the request body (``("requests", 3)`` in
        a batch): errors point at its ``backend`` field. ``None`` when the name
        is not from the body (a path parameter): errors then point nowhere.

        Raises:
            InvalidRequest: no name was given and there is no default backend.
            Forbidden: the caller's key does not include the backend.
            UnknownBackend: no backend has that name.
        """
        chosen = self.default_backend if name is None else name
        if chosen is not None and principal.may_use(chosen):
            backend = self.backends.get(chosen)
            if backend is not None:
                return backend
        # Refused: the pointer is only built now, off the path of a good call.
        where = None if at is None else pointer([*at, "backend"])
        if chosen is None:
            missing = where or pointer(["backend"])  # (a name from the path is never None)
            raise InvalidRequest(
                "name a backend: several are configured and none is the default",
                [{"detail": "required when there is no default backend", "pointer": missing}],
                pointer=missing,
            )
        if name is None and not principal.may_use(chosen):
            # The default backend is out of scope: its name is not this caller's to learn.
            raise Forbidden(
                f"API key {principal.name!r} may not use the default backend: name a backend "
                "it may use",
                pointer=where,
            )
        principal.require(chosen, pointer=where)
        raise UnknownBackend(f"no backend is named {chosen!r}", pointer=where)

    def describe_backends(self, principal: Principal) -> list[dict[str, Any]]:
        """``GET /backends``: what the caller may use, without any secret."""
        out = []
        for name, backend in self.backends.items():
            if not principal.may_use(name):
                continue
            pool = backend.pool
            info: dict[str, Any] = {}
            if backend.is_manager:
                info = {
                    "typeids": list(backend.settings.typeids or ()),
                    "methods": {k: list(v) for k, v in backend.settings.methods.items()},
                    "object_ttl": backend.settings.object_ttl,
                    "objects": len(backend.objects) if backend.objects is not None else 0,
                }
            out.append(
                {
                    "name": name,
                    "kind": backend.settings.kind,
                    "default": name == self.default_backend,
                    "addresses": [str(a) for a in backend.settings.address],
                    "timeout": backend.settings.pool.call_timeout,
                    "max_connections": backend.settings.pool.max_connections,
                    "pickle_protocol": backend.settings.pool.pickle_protocol,
                    "payload_schema": backend.settings.payload_schema,
                    "health": pool.health() if pool is not None else {"status": "unknown"},
                    "stats": dict(pool.stats()) if pool is not None else {},
                    **info,
                }
            )
        return out
