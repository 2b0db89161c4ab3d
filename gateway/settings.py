"""The gateway's configuration: a TOML file, overridden by the environment.

The file is named by ``--config PATH`` or by the environment variable
``CONNBRIDGE_CONFIG``. Any key can then be overridden by an environment
variable ``CONNBRIDGE_<SECTION>__<KEY>`` (``__`` separates the levels, case
does not matter)::

    CONNBRIDGE_GATEWAY__MAX_BODY_BYTES=65536
    CONNBRIDGE_BACKENDS__ADDER__TIMEOUT=2.5
    CONNBRIDGE_GATEWAY__CORS_ORIGINS='["https://app.example"]'

Lists and tables are given as JSON. Because environment names are
case-insensitive, backends overridden this way must have lower-case names.

.. code-block:: toml

    [gateway]
    default_backend = "adder"     # may be omitted when there is one backend
    max_body_bytes = 1048576

    [backends.adder]
    address = "127.0.0.1:11111"   # or a list of addresses: replicas
    authkey_env = "ADDER_AUTHKEY" # or authkey_file = "/run/secrets/adder"
    timeout = 5.0

    [[auth.keys]]
    name = "ci"
    sha256 = "<hex SHA-256 of the key>"
    backends = ["*"]

Every problem is reported as ``FILE: KEY: MESSAGE`` (for example
``connbridge.toml: backends.adder.address: ...``) through :class:`ConfigError`,
and the command line exits with status 2 before serving anything.

Backend authkeys are read when the configuration is loaded (so a missing
environment variable is a configuration error, not a failure at the first
request) and are kept out of every ``repr``, log line and response: only
:meth:`BackendSettings.authkey_bytes` hands them out, to the pool.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import jsonschema.exceptions
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from connbridge.addresses import Address, parse_address
from connbridge.codec import DEFAULT_MAX_RESULT_BYTES
from connbridge.errors import AddressError, ConnbridgeError
from connbridge.pool import PoolSettings
from connbridge.unpickler import resolve_entry

__all__ = [
    "CONFIG_ENV",
    "ApiKeySettings",
    "AuthSettings",
    "BackendSettings",
    "ConfigError",
    "GatewaySettings",
    "Settings",
    "WebSocketSettings",
    "load_settings",
]

logger = logging.getLogger("connbridge.gateway")

#: Environment variable naming the configuration file when ``--config`` is absent.
CONFIG_ENV = "CONNBRIDGE_CONFIG"
_ENV_PREFIX = "CONNBRIDGE_"

_BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ConfigError(ConnbridgeError, ValueError):
    """The configuration cannot be used; ``problems`` lists ``(key, message)`` pairs.

    ``str()`` gives one ``SOURCE: KEY: MESSAGE`` line per problem, where
    SOURCE is the file; a value set by an environment variable has
    ``(from VARIABLE)`` after its key.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [
            f"{source}: {key}: {message}" if key else f"{source}: {message}"
            for key, message in self.problems
        ]
        super().__init__("\n".join(lines))


def _parse_addresses(value: object) -> tuple[Address, ...]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        # A list given through an environment variable, as JSON. (A TOML
        # string cannot be an address starting with "[" alone: IPv6 needs ":port".)
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("expected an address string or a non-empty list of them")
    addresses = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected an address string, got {item!r}")
        try:
            addresses.append(parse_address(item))
        except AddressError as exc:
            raise ValueError(str(exc)) from None
    return tuple(addresses)


Addresses = Annotated[
    tuple[Address, ...],
    # Decoded here, not by pydantic-settings: a single address in the
    # environment is a plain string, not JSON.
    NoDecode,
    PlainValidator(_parse_addresses),
    PlainSerializer(lambda addresses: [str(a) for a in addresses], return_type=list[str]),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Section):
    """The ``[gateway]`` table: how the HTTP side behaves."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    default_backend: str | None = None
    max_body_bytes: PositiveInt = 1024 * 1024
    #: Serve on a non-loopback address with no API keys configured.
    allow_anonymous: bool = False
    #: ``/metrics`` without an API key even when keys are configured.
    metrics_public: bool = False
    cors_origins: tuple[str, ...] = ()
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    batch_max_requests: PositiveInt = 100
    batch_concurrency: PositiveInt = 16
    #: Seconds given to calls in flight at shutdown (SIGTERM) before they are cancelled.
    shutdown_grace: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0
    #: Seconds a ``/readyz`` probe waits for each backend.
    readiness_timeout: PositiveFloat = 2.0
    #: Deepest nesting accepted in a payload and produced in a result.
    max_depth: Annotated[int, Field(ge=1, le=10_000)] = 256
    #: Most text (strings, base64 of bytes) in one result; a reply that shares
    #: one large string many times would otherwise expand without bound.
    max_result_bytes: PositiveInt = DEFAULT_MAX_RESULT_BYTES
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile must be set together")
        return self


_POOL = PoolSettings()


class BackendSettings(_Section):
    """A ``[backends.NAME]`` table: one Listener server (or a set of replicas)."""

    address: Addresses
    authkey_env: str | None = None
    authkey_file: Path | None = None
    #: A key written in the file itself: works, but is logged as a warning.
    authkey: SecretStr | None = None
    # Defaults come from the pool's own settings, so the two never disagree.
    #: Seconds per call; a request may ask for less, never for more.
    timeout: PositiveFloat = _POOL.call_timeout
    max_connections: PositiveInt = _POOL.max_connections
    pickle_protocol: Annotated[int, Field(ge=0, le=5)] = _POOL.pickle_protocol
    payload_schema: dict[str, Any] | None = None
    allowlist: tuple[str, ...] = _POOL.allowlist
    py2_encoding: str = _POOL.py2_encoding
    allow_md5: bool = _POOL.allow_md5
    connect_timeout: PositiveFloat = _POOL.connect_timeout
    handshake_timeout: PositiveFloat = _POOL.handshake_timeout
    acquire_timeout: PositiveFloat = _POOL.acquire_timeout
    max_waiters: PositiveInt = _POOL.max_waiters
    idle_timeout: PositiveFloat = _POOL.idle_timeout
    max_lifetime: PositiveFloat = _POOL.max_lifetime
    max_frame: PositiveInt = _POOL.max_frame

    _authkey: bytes | None = PrivateAttr(default=None)
    _resolved: bool = PrivateAttr(default=False)

    @field_validator("payload_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.exceptions.SchemaError as exc:
                where = "/" + "/".join(str(p) for p in exc.absolute_path)
                raise ValueError(f"not a valid JSON Schema (at {where}): {exc.message}") from None
        return value

    @field_validator("allowlist")
    @classmethod
    def _importable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Imported now, so an entry that cannot be resolved stops the start-up
        # instead of failing the first call.
        for entry in value:
            try:
                resolve_entry(entry)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("py2_encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value != "bytes":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
        return value

    def resolve_authkey(self, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
        """Read the authkey from where the settings say; return ``(key, problem)`` on failure.

        Called by :func:`load_settings`; idempotent.
        """
        if self._resolved:
            return None
        env = os.environ if environ is None else environ
        sources = [
            name
            for name in ("authkey_env", "authkey_file", "authkey")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            return sources[1], "set only one of authkey_env, authkey_file and authkey"
        key: bytes | None = None
        if self.authkey_env is not None:
            text = env.get(self.authkey_env)
            if not text:
                return "authkey_env", f"environment variable {self.authkey_env} is unset or empty"
            key = os.fsencode(text)
        elif self.authkey_file is not None:
            try:
                key = self.authkey_file.read_bytes()
            except OSError as exc:
                return "authkey_file", f"cannot read {self.authkey_file}: {exc.strerror}"
            # Secret files usually end with the newline an editor or echo added.
            key = key.rstrip(b"\r\n")
            if not key:
                return "authkey_file", f"{self.authkey_file} is empty"
        elif self.authkey is not None:
            key = self.authkey.get_secret_value().encode("utf-8")
            if not key:
                return "authkey", "the key is empty"
        self._authkey = key
        self._resolved = True
        return None

    def authkey_bytes(self) -> bytes | None:
        """The authkey for the pool; ``None`` means the backend expects none.

        Raises:
            ConfigError: the key cannot be read (see :meth:`resolve_authkey`).
        """
        problem = self.resolve_authkey()
        if problem is not None:
            raise ConfigError("configuration", [problem])
        return self._authkey


class ApiKeySettings(_Section):
    """One ``[[auth.keys]]`` entry: a client key, stored as its SHA-256."""

    name: str
    sha256: str
    #: Backend names this key may call, or ``["*"]`` for all of them.
    backends: tuple[str, ...] = ("*",)

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex_digest(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if not _SHA256_HEX.fullmatch(value):
                raise ValueError("expected the 64 hex digits of a SHA-256 digest of the key")
        return value

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        # The hash is not the key, but there is no reason to print it either.
        return [("name", self.name), ("backends", self.backends)]


class WebSocketSettings(_Section):
    """The ``[websocket]`` table: limits of ``/ws`` and ``/ws/session/{backend}``.

    ``max_message_bytes``, ``ping_interval``, ``ping_timeout`` and
    ``per_message_deflate`` are enforced by the server's WebSocket protocol
    (uvicorn's ``ws_*`` options, see :func:`gateway.routes.ws.uvicorn_options`);
    the routes check ``max_message_bytes`` again, so the limit holds under
    any server.
    """

    #: Calls in flight on one ``/ws`` socket; past it the gateway stops reading.
    max_in_flight: PositiveInt = 64
    #: Largest message a client may send (close code 1009 past it).
    max_message_bytes: PositiveInt = 1024 * 1024
    #: Messages waiting to be written to one socket.
    send_queue: PositiveInt = 256
    #: Seconds a message may wait for room in a full send queue before the
    #: client, which is not reading, is disconnected (close code 1008).
    send_timeout: PositiveFloat = 10.0
    #: Open sessions per backend (each holds its own backend connection).
    max_sessions_per_backend: PositiveInt = 100
    #: Seconds without a message in either direction before a session is closed.
    session_idle_timeout: PositiveFloat = 300.0
    #: Seconds between keepalive pings; ``ping_timeout`` seconds without a pong close the socket.
    ping_interval: PositiveFloat | None = 20.0
    ping_timeout: PositiveFloat | None = 20.0
    per_message_deflate: bool = False


class AuthSettings(_Section):
    """The ``[auth]`` table: with no keys the API is open (loopback only, by default)."""

    keys: tuple[ApiKeySettings, ...] = ()


class Settings(BaseSettings):
    """The whole configuration; build it with :func:`load_settings`.

    Constructing it directly (``Settings(backends={...})``) is meant for
    tests and embedding: environment overrides still apply.
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    gateway: GatewaySettings = GatewaySettings()
    backends: dict[str, BackendSettings] = {}
    auth: AuthSettings = AuthSettings()
    websocket: WebSocketSettings = WebSocketSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init arguments; the environment wins over it.
        return env_settings, init_settings

    @field_validator("backends")
    @classmethod
    def _backend_names(cls, value: dict[str, BackendSettings]) -> dict[str, BackendSettings]:
        for name in value:
            if not _BACKEND_NAME.fullmatch(name):
                raise ValueError(
                    f"backend name {name!r}: use letters, digits, '_', '-' and '.' "
                    "(at most 64, starting with a letter or digit)"
                )
        return value

    @property
    def default_backend(self) -> str | None:
        """The backend of ``POST /compute`` without ``"backend"``: configured, or the only one."""
        if self.gateway.default_backend is not None:
            return self.gateway.default_backend
        if len(self.backends) == 1:
            return next(iter(self.backends))
        return None

    def cross_check(self) -> list[tuple[str, str]]:
        """Problems that involve several tables, as ``(key, message)`` pairs."""
        problems: list[tuple[str, str]] = []
        default = self.gateway.default_backend
        if default is not None and default not in self.backends:
            problems.append(("gateway.default_backend", f"no backend is named {default!r}"))
        names = set()
        for index, key in enumerate(self.auth.keys):
            where = f"auth.keys[{index}]"
            if key.name in names:
                problems.append((f"{where}.name", f"duplicate key name {key.name!r}"))
            names.add(key.name)
            for backend in key.backends:
                if backend != "*" and backend not in self.backends:
                    problems.append((f"{where}.backends", f"no backend is named {backend!r}"))
        return problems


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _describe(error: Mapping[str, Any]) -> str:
    message = _MESSAGES.get(error["type"])
    if message is None:
        message = str(error["msg"]).removeprefix("Value error, ")
    return message


def _origin(loc: Sequence[int | str], environ: Mapping[str, str]) -> str | None:
    """The environment variable that set the value at ``loc``, if one did."""
    names = [str(p) for p in loc if isinstance(p, str)]
    present = {key.upper() for key in environ if key.upper().startswith(_ENV_PREFIX)}
    for depth in range(len(names), 0, -1):
        variable = _ENV_PREFIX + "__".join(names[:depth]).upper()
        if variable in present:
            return variable
    return None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load the configuration file at ``path`` (or ``$CONNBRIDGE_CONFIG``), then the environment.

    With neither, only defaults and environment variables apply (no backends
    unless the environment defines some). Backend authkeys are read here.

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown or
            has a bad value, or an authkey cannot be read. The message names
            the file (or environment variable) and the key.
    """
    env = os.environ
    if path is None:
        path = env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        source = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(source, [("", f"cannot read the file: {exc.strerror}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [("", f"invalid TOML: {exc}")]) from None
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        # An environment variable that should hold JSON does not.
        raise ConfigError(source, [("", f"{exc} (lists and tables are written as JSON)")]) from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = _key_path(error["loc"])
            variable = _origin(error["loc"], env)
            if variable is not None:
                key += f" (from {variable})"
            problems.append((key, _describe(error)))
        raise ConfigError(source, problems) from None
    problems = settings.cross_check()
    for name, backend in settings.backends.items():
        problem = backend.resolve_authkey(env)
        if problem is not None:
            problems.append((f"backends.{name}.{problem[0]}", problem[1]))
        elif backend.authkey is not None:
            logger.warning(
                "%s: backends.%s.authkey: the key is written in the configuration; "
                "prefer authkey_env or authkey_file",
                source,
                name,
            )
    if problems:
        raise ConfigError(source, problems)
    return settings
