"""The gateway's configuration: a TOML file, overridden by the environment.

The file is named by ``--config PATH`` or by the environment variable
``CONNBRIDGE_CONFIG``. Any key can then be overridden by an environment
variable ``CONNBRIDGE_<SECTION>__<KEY>`` (``__`` separates the levels, case
does not matter)::

    CONNBRIDGE_GATEWAY__MAX_BODY_BYTES=65536
    CONNBRIDGE_BACKENDS__ADDER__CALL_TIMEOUT=2.5
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
    call_timeout = 2.5            # an example (the default is 30)

    [backends.jobs]               # a multiprocessing.managers server
    kind = "manager"
    address = "10.0.0.7:50000"
    typeids = ["get_queue"]       # what clients may create ("*": anything)
    methods = { get_queue = ["put", "get", "qsize"] }   # optional narrowing

    [[auth.keys]]
    name = "ci"
    sha256 = "<hex SHA-256 of the key>"
    backends = ["*"]

Every problem is reported as ``FILE: KEY: MESSAGE`` (for example
``connbridge.toml: backends.adder.address: ...``) through :class:`ConfigError`,
and the command line exits with status 2 before serving anything. An
unknown key is reported with the key of that table it is closest to
(``backends.adder.max_conections: unknown key; did you mean
max_connections?``), from the file or the environment; a variable
``CONNBRIDGE_<SECTION>__...`` of no section is one too.

A backend's pool keys are not declared here: :class:`BackendSettings` has
one key per field of :class:`~connbridge.pool.PoolSettings` (``POOL_KEYS``:
all but ``GATEWAY_WIDE_POOL_FIELDS``), with its type, default and rule, and
hands them to the pool as ``backend.pool``. A field added to the pool's
settings is a key of every backend table, and of the environment, at once.
``timeout``, the old name of ``call_timeout``, is still read, with a
``DeprecationWarning``.

Backend authkeys are read by :func:`read_authkeys` when the app's state is
built (so a missing environment variable stops the start-up, not the first
request), and are kept out of every ``repr``, log line and response.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import re
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import jsonschema
import jsonschema.exceptions
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
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
from connbridge.codec import DEFAULT_MAX_RESULT_BYTES, from_json
from connbridge.errors import AddressError, ConnbridgeError, PayloadError
from connbridge.pool_settings import PoolSettings, field_doc, field_problem

__all__ = [
    "CONFIG_ENV",
    "GATEWAY_WIDE_POOL_FIELDS",
    "MAX_SCHEMA_DEPTH",
    "POOL_KEYS",
    "RENAMED_BACKEND_KEYS",
    "ApiKeySettings",
    "AuthSettings",
    "BackendSettings",
    "ConfigError",
    "GatewaySettings",
    "Settings",
    "WebSocketSettings",
    "load_settings",
    "read_authkeys",
    "table_of",
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
            raise ValueError(f"expected an address string, got {_json_kind(item)}")
        try:
            addresses.append(parse_address(item))
        except AddressError as exc:
            raise ValueError(_unechoed(str(exc), item)) from None
    return tuple(addresses)


# -- messages that never repeat a value that may be a secret ---------------------------
#
# A key pasted into the wrong place (address = "<the key>", authkey_env =
# "<the key>", authkey_file = "<the key>") must not reach the exit message or
# a log. A value is repeated only when it looks like what the key expects.

_NOT_SHOWN: Final = "<value not shown>"
# An environment variable name as they are written: upper-case words joined
# by "_"; a random key rarely has no lower-case letter and no run of 17.
_VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_LONG_RUN = re.compile(r"[A-Z0-9]{17}")
# An absolute path of plain names; a base64 key has "+" or "=", a urlsafe one
# no "/" (and a name that looks random is not shown either, see _looks_random).
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9._-]{1,64})+/?")


def _json_kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _unechoed(message: str, value: str) -> str:
    """``message`` (about ``value``) with every piece of ``value`` taken out."""
    message = message.replace(repr(value), _NOT_SHOWN)
    leaks = [message.find(value[i : i + 3]) for i in range(max(len(value) - 2, 1))]
    found = [at for at in leaks if at >= 0]
    if not found or len(value) < 3:
        return message
    # A message that quotes a part of the value ("write ... as 'unix:/x'"):
    # keep what comes before the quote.
    cut = message.rfind("'", 0, min(found) + 1)
    head = message[: cut if cut >= 0 else min(found)].rstrip(" ,:")
    return f"{head.removesuffix(' as').rstrip(' ,:')} ({_NOT_SHOWN})"


def _shown_variable(name: str) -> str:
    if _VARIABLE_NAME.fullmatch(name) and not _LONG_RUN.search(name):
        return f"environment variable {name}"
    return f"the environment variable it names ({_NOT_SHOWN}: it does not look like a name)"


def _looks_random(word: str) -> bool:
    # A file name is words joined by "-", "_" or "."; a key is a long run in
    # both cases (base64, urlsafe, with or without digits), or letters with
    # many digits (hex), or one very long run. Hiding a real name by mistake
    # costs a look at the configuration; showing a key costs the key.
    if len(word) < 16:
        return False
    digits = sum(c.isdigit() for c in word)
    mixed_case = any(c.isupper() for c in word) and any(c.islower() for c in word)
    longest = max(map(len, re.split(r"[-_.]", word)))
    return mixed_case or digits >= len(word) / 5 or longest > 20


def _shown_path(path: Path) -> str:
    text = os.fspath(path)
    if _PLAIN_PATH.fullmatch(text) and not any(map(_looks_random, text.split("/"))):
        return text
    return f"the file it names ({_NOT_SHOWN}: it does not look like an absolute path)"


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

    host: str = Field(
        default="127.0.0.1", description="Address to listen on (`--host` wins over it)."
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=8000, description="Port to listen on; 0 picks a free one (`--port` wins over it)."
    )
    default_backend: str | None = Field(
        default=None,
        description="Backend of a call that names none; may be left out when there is one.",
    )
    max_body_bytes: PositiveInt = Field(
        default=1024 * 1024, description="Largest request body, refused while it is read (413)."
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Listen on a non-loopback address even though no API key is configured.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve `/metrics` without an API key even when keys are configured.",
    )
    cors_origins: tuple[str, ...] = Field(
        default=(),
        description='Origins browsers may call from (`["https://app.example"]`); none: CORS off.',
    )
    tls_certfile: Path | None = Field(
        default=None,
        description="Certificate chain (PEM); with `tls_keyfile`, the gateway serves HTTPS.",
    )
    tls_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of `tls_certfile`."
    )
    batch_max_requests: PositiveInt = Field(
        default=100, description="Calls in one `POST /compute/batch` at most."
    )
    batch_concurrency: PositiveInt = Field(
        default=16, description="Calls of one batch running at the same time."
    )
    shutdown_grace: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=10.0,
        description="Seconds calls in flight get to finish after SIGTERM before they are "
        "cancelled (also every pool's `close_grace`).",
    )
    readiness_timeout: PositiveFloat = Field(
        default=2.0, description="Seconds a `/readyz` probe waits for each backend."
    )
    max_client_connections: PositiveInt | None = Field(
        default=None,
        description="Open client connections (HTTP and WebSocket) at most; unset: what the "
        "descriptor limit leaves beside the backends' connections. At the cap an idle "
        "connection, or one still sending its headers, is closed to make room; with none, "
        "a 503 `too-many-connections`.",
    )
    header_timeout: PositiveFloat = Field(
        default=10.0,
        description="Seconds a client has to send a request's headers (408 `request-timeout`).",
    )
    body_timeout: PositiveFloat = Field(
        default=30.0,
        description="Seconds a request body may stall, no byte arriving, while it is read (408).",
    )
    keepalive_timeout: PositiveFloat = Field(
        default=75.0,
        description="Seconds an idle keep-alive connection stays open between requests: "
        "longer than clients keep idle connections (httpx 5 s, load balancers 60 s), so a "
        "client never sends on a connection the gateway is closing at that instant.",
    )
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=64 * 1024,
        description="Largest request header block, in bytes (431 `headers-too-large` past it).",
    )
    linger_timeout: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=5.0,
        description="After an answer sent before the body was read (an early 413), seconds "
        "the rest of the body is read and dropped, so a client still sending sees the answer.",
    )
    linger_bytes: Annotated[int, Field(ge=0)] = Field(
        default=64 * 1024 * 1024, description="Bytes read and dropped that way at most."
    )
    max_depth: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=256, description="Deepest nesting accepted in a payload and produced in a result."
    )
    max_result_bytes: PositiveInt = Field(
        default=DEFAULT_MAX_RESULT_BYTES,
        description="Most text (strings, base64 of bytes) in one result, so a reply that "
        "repeats one large string cannot expand without bound (502 past it).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description='Least severe log lines written (`"debug"` ... `"critical"`).'
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description='`"text"` lines, or `"json"`: one object per line.'
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile must be set together")
        return self


#: ``PoolSettings`` fields that are not set per backend, and why.
GATEWAY_WIDE_POOL_FIELDS: Final[Mapping[str, str]] = {
    "close_grace": "every pool gets [gateway] shutdown_grace",
}
#: Old spellings of backend keys: still read, with a ``DeprecationWarning``.
RENAMED_BACKEND_KEYS: Final[Mapping[str, str]] = {"timeout": "call_timeout"}
#: The pool's own keys in a ``[backends.NAME]`` table: every other field of
#: :class:`~connbridge.pool.PoolSettings`.
POOL_KEYS: Final = tuple(
    f.name for f in dataclasses.fields(PoolSettings) if f.name not in GATEWAY_WIDE_POOL_FIELDS
)
# Where a backend's authkey may come from, but for the literal ``authkey``.
_AUTHKEY_SOURCES: Final = ("authkey_env", "authkey_file")


#: The deepest nesting of objects and arrays accepted in a ``payload_schema``.
MAX_SCHEMA_DEPTH: Final = 64


def _nests_deeper(value: object, limit: int) -> bool:
    """True if ``value`` nests more than ``limit`` objects and arrays (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class _BackendTable(_Section):
    """A ``[backends.NAME]`` table: one Listener server (or a set of replicas).

    The keys declared here are the gateway's; :data:`BackendSettings` adds
    one key per name in ``POOL_KEYS``, read back as :attr:`pool`.
    """

    address: Addresses = Field(
        description='Where the server listens: `"host:port"`, `"[::1]:port"`, `"unix:/path"`, '
        '`"unix:@name"`, or a list of them (replicas).',
    )
    authkey_env: str | None = Field(
        default=None, description="Environment variable holding the server's authkey."
    )
    authkey_file: Path | None = Field(
        default=None, description="File holding the server's authkey (a final newline is dropped)."
    )
    authkey: SecretStr | None = Field(
        default=None,
        description="The authkey written in the file itself: works, but is logged as a "
        "warning (prefer the two keys above).",
    )
    payload_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema every payload must match before it is sent (at most 64 "
        'levels of tables and arrays; write recursive shapes with `"$ref"`).',
    )
    kind: Literal["listener", "manager"] = Field(
        default="listener",
        description='`"listener"`: calls with payloads; `"manager"`: a '
        "`multiprocessing.managers` server, whose shared objects are REST resources.",
    )
    typeids: tuple[str, ...] | None = Field(
        default=None,
        description="Manager backends (required there): the typeids clients may create; "
        '`["*"]`: any.',
    )
    methods: dict[str, tuple[str, ...]] = Field(
        default={},
        description="Manager backends: per typeid, the only methods clients may call (of "
        "those the server exposes).",
    )
    object_ttl: PositiveFloat = Field(
        default=3600.0,
        description="Manager backends: seconds an object created through the gateway may "
        "stay unused before its reference is released.",
    )
    max_objects: PositiveInt = Field(
        default=10_000, description="Manager backends: objects the gateway holds at once at most."
    )

    # -- streaming (``/stream``): the gateway's keys, not the pool's ------------------
    # (how the backend's end of a stream is told: see :mod:`gateway.routes.stream`)
    stream_end: Literal["idle", "closed", "count", "sentinel"] = Field(
        default="idle",
        description='How this backend\'s streams end: `"idle"` (`stream_idle_timeout` of '
        'silence), `"closed"` (it closes the connection), `"count"` (each request says '
        '`replies`) or `"sentinel"` (a reply equal to `stream_sentinel`).',
    )
    stream_sentinel: str = Field(
        default="null",
        description='With `stream_end = "sentinel"`: the last reply, as JSON text '
        "(`'\"done\"'`; TOML has no null).",
    )
    stream_idle_timeout: PositiveFloat = Field(
        default=5.0, description="Seconds of silence after a reply that end a stream."
    )
    stream_heartbeat_interval: PositiveFloat = Field(
        default=15.0,
        description="Seconds without a reply after which an SSE stream gets a comment.",
    )
    max_replies: PositiveInt = Field(
        default=10_000,
        description="Replies in one stream at most (and the largest `replies` asked).",
    )
    max_reply_bytes: PositiveInt = Field(
        default=1024 * 1024,
        description="Largest reply of a stream, in bytes of pickle (and at most `max_frame`).",
    )
    max_streams: PositiveInt = Field(
        default=100,
        description="Streams open at once on this backend (503 `too-many-streams` past it).",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        # The old name is an alias of the new one (so a problem names the key
        # as written); here it is only warned about.
        if isinstance(data, Mapping):
            for old, new in RENAMED_BACKEND_KEYS.items():
                if old in data and new in data:
                    raise ValueError(f"{old} is the old name of {new}: set only {new}")
                if old in data:
                    warnings.warn(
                        f"the backend key {old!r} is deprecated; write {new!r}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
        return data

    # Fields are validated in order, so the second source given is the one named.
    @field_validator("authkey_file", "authkey")
    @classmethod
    def _one_authkey_source(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and any(info.data.get(name) is not None for name in _AUTHKEY_SOURCES):
            raise ValueError("set only one of authkey_env, authkey_file and authkey")
        return value

    @field_validator("payload_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if _nests_deeper(value, MAX_SCHEMA_DEPTH):
                # jsonschema checks (and validates) recursively: a schema a few
                # hundred levels deep would be a RecursionError, here or per call.
                raise ValueError(
                    f"the schema nests more than {MAX_SCHEMA_DEPTH} levels of objects and "
                    "arrays (write recursive shapes with $ref)"
                )
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.exceptions.SchemaError as exc:
                where = "/" + "/".join(str(p) for p in exc.absolute_path)
                raise ValueError(f"not a valid JSON Schema (at {where}): {exc.message}") from None
            except RecursionError:  # within MAX_SCHEMA_DEPTH only on a very small stack
                raise ValueError("the schema nests too deeply to be checked") from None
        return value

    @field_validator("stream_sentinel")
    @classmethod
    def _sentinel_is_json(cls, value: str) -> str:
        try:
            from_json(json.loads(value))
        except (ValueError, PayloadError) as exc:
            raise ValueError(f"must be a JSON value written as text ('null'): {exc}") from None
        return value

    @cached_property
    def sentinel(self) -> object:
        """``stream_sentinel`` as the Python value a reply is compared with."""
        return from_json(json.loads(self.stream_sentinel))

    @model_validator(mode="after")
    def _manager_keys(self) -> _BackendTable:
        if self.kind == "manager":
            if not self.typeids:
                raise ValueError('a manager backend needs typeids (["*"] allows every typeid)')
            if "*" in self.typeids and len(self.typeids) > 1:
                raise ValueError('typeids: "*" allows every typeid; list no others with it')
            if self.payload_schema is not None:
                raise ValueError("a manager backend takes no payload_schema (it takes no payloads)")
        elif self.typeids is not None or self.methods:
            raise ValueError('typeids and methods are keys of kind = "manager" backends')
        return self

    @model_validator(mode="after")
    def _pool_as_a_whole(self) -> _BackendTable:
        # Each key passed its own rule; a rule that spans keys shows here.
        _ = self.pool
        return self

    # Made once, when the table is validated. (Like any pydantic model, a
    # model_copy(update=...) is not validated, and keeps this stale.)
    @cached_property
    def pool(self) -> PoolSettings:
        """This backend's pool settings (``close_grace`` left at its default).

        Raises:
            ValueError: the keys break a rule of :class:`PoolSettings` together.
        """
        return PoolSettings(**{name: getattr(self, name) for name in POOL_KEYS})


def _pool_key(f: dataclasses.Field[Any], annotation: Any) -> tuple[Any, Any]:
    """The pydantic field of one ``PoolSettings`` field: type, default, rule, meaning, old names."""

    def check(value: object) -> object:
        problem = field_problem(f.name, value)
        if problem is not None:
            raise ValueError(problem)
        return value

    old_names = [old for old, new in RENAMED_BACKEND_KEYS.items() if new == f.name]
    alias = AliasChoices(f.name, *old_names) if old_names else None
    description = field_doc(f.name)
    if f.default_factory is not dataclasses.MISSING:
        info = Field(
            default_factory=f.default_factory, validation_alias=alias, description=description
        )
    elif f.default is not dataclasses.MISSING:
        info = Field(default=f.default, validation_alias=alias, description=description)
    else:
        info = Field(validation_alias=alias, description=description)
    return Annotated[annotation, AfterValidator(check)], info


def _backend_settings() -> type[_BackendTable]:
    annotations = typing.get_type_hints(PoolSettings)
    keys: dict[str, Any] = {
        f.name: _pool_key(f, annotations[f.name])
        for f in dataclasses.fields(PoolSettings)
        if f.name in POOL_KEYS
    }
    return create_model(
        "BackendSettings",
        __base__=_BackendTable,
        __module__=__name__,
        __doc__=_BackendTable.__doc__,
        **keys,
    )


if TYPE_CHECKING:
    # The pool keys are made at run time; typed code reads them from ``.pool``.
    BackendSettings = _BackendTable
else:
    BackendSettings = _backend_settings()


class ApiKeySettings(_Section):
    """One ``[[auth.keys]]`` entry: a client key, stored as its SHA-256."""

    name: str = Field(description="The key's name, in logs and problems (never the key).")
    sha256: str = Field(
        description='Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`); the key itself '
        "is never configured."
    )
    backends: tuple[str, ...] = Field(
        default=("*",), description='Backends this key may use; `["*"]`: all of them.'
    )

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

    max_in_flight: PositiveInt = Field(
        default=64,
        description="Calls running at once on one `/ws` socket; past it the gateway stops reading.",
    )
    max_message_bytes: PositiveInt = Field(
        default=1024 * 1024,
        description="Largest message a client may send (close code 1009 past it).",
    )
    send_queue: PositiveInt = Field(
        default=256, description="Messages waiting to be written to one socket."
    )
    send_timeout: PositiveFloat = Field(
        default=10.0,
        description="Seconds a message may wait for room in a full send queue before the "
        "client, which is not reading, is dropped (1008).",
    )
    max_sessions_per_backend: PositiveInt = Field(
        default=100,
        description="Open sessions per backend, each with a backend connection of its own "
        "(1013 past it).",
    )
    session_idle_timeout: PositiveFloat = Field(
        default=300.0,
        description="Seconds without a message either way before a session is closed (1001).",
    )
    ping_interval: PositiveFloat | None = Field(
        default=20.0, description="Seconds between the server's keepalive pings."
    )
    ping_timeout: PositiveFloat | None = Field(
        default=20.0,
        description="Seconds without an answer to a ping before the socket is closed.",
    )
    per_message_deflate: bool = Field(
        default=False,
        description="Compress messages; off, since small JSON messages gain little and it "
        "costs CPU.",
    )
    max_sockets: PositiveInt = Field(
        default=1000,
        description="Open WebSockets at most, both routes; past it a handshake gets a 503 "
        "`too-many-connections` problem.",
    )
    write_buffer_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=64 * 1024,
        description="Bytes waiting in a socket's transport before the gateway stops reading "
        "from the client (pings and calls alike); over it for `send_timeout` seconds, the "
        "client is dropped with 1008 `slow-client`.",
    )
    close_timeout: PositiveFloat = Field(
        default=5.0,
        description="Seconds the gateway waits for the client's close frame after its own "
        "(refusals included); then the connection is aborted.",
    )


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
    "missing": "required key is missing",
}


def _describe(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown_key(error["loc"])
    message = _MESSAGES.get(error["type"])
    if message is None:
        message = str(error["msg"]).removeprefix("Value error, ")
    return message


# -- unknown keys: what was meant -------------------------------------------------------


def table_of(annotation: Any) -> tuple[type[BaseModel], Literal["table", "named", "array"]] | None:
    """The model of a key that holds tables, and how: ``None`` for a key that holds a value.

    ``"table"``: one table (``[gateway]``); ``"named"``: a table per name
    (``[backends.NAME]``); ``"array"``: an array of tables (``[[auth.keys]]``).
    The README's table of keys and the "did you mean" of an unknown key walk
    the models with it, so both follow every table added.
    """
    how: Literal["table", "named", "array"] = "table"
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]  # an optional table
        elif origin is dict and how == "table" and len(args) == 2:
            annotation, how = args[1], "named"
        elif origin is tuple and how == "table" and len(args) == 2 and args[1] is Ellipsis:
            annotation, how = args[0], "array"
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation, how
        else:
            return None


def _keys_at(loc: Sequence[int | str]) -> list[str]:
    """The keys a table accepts at ``loc`` (a pydantic error location), or none if unknown."""
    model: type[BaseModel] = Settings
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        table = None if field is None else table_of(field.annotation)
        if table is None:
            return []
        model, how = table
        if how != "table":
            if not parts:
                return []  # the name of a table, or an index: any is valid
            parts.pop(0)
    return list(model.model_fields)


def _unknown_key(loc: Sequence[int | str]) -> str:
    """``unknown key``, with the key that was probably meant (a name, never a value)."""
    *parent, typed = loc
    if len(parent) == 2 and parent[0] == "backends" and typed in GATEWAY_WIDE_POOL_FIELDS:
        return f"unknown key: {GATEWAY_WIDE_POOL_FIELDS[str(typed)]}"
    close = difflib.get_close_matches(str(typed).lower(), _keys_at(parent), n=1)
    return f"unknown key; did you mean {close[0]}?" if close else "unknown key"


def _unknown_sections(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Variables ``CONNBRIDGE_<SECTION>__...`` whose section does not exist.

    pydantic-settings reads only the variables of known sections, so a typo
    in a section's name would otherwise be ignored without a word.
    (``CONNBRIDGE_`` names without ``__`` are left alone: the tests' switches,
    Kubernetes' service variables.)
    """
    problems = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(_ENV_PREFIX) or "__" not in name:
            continue
        loc = name.removeprefix(_ENV_PREFIX).lower().split("__")
        if loc[0] not in Settings.model_fields:
            problems.append((f"{loc[0]} (from {name})", _unknown_key(loc[:1])))
    return problems


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
    unless the environment defines some). Authkeys are not read here but by
    :func:`read_authkeys`, when the app's state is built.

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown or
            has a bad value, or a table names a backend that does not exist.
            The message names the file (or environment variable) and the key.
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
        except RecursionError:  # tomllib parses nested tables recursively
            raise ConfigError(source, [("", "invalid TOML: nested too deeply")]) from None
    problems = _unknown_sections(env)
    try:
        settings = Settings(**data)
    except RecursionError:
        # A value nested hundreds of levels deep (the parsers recurse).
        raise ConfigError(source, [("", "a value is nested too deeply")]) from None
    except SettingsError as exc:
        # An environment variable that should hold JSON does not.
        raise ConfigError(source, [("", f"{exc} (lists and tables are written as JSON)")]) from None
    except ValidationError as exc:
        for error in exc.errors():
            key = _key_path(error["loc"])
            variable = _origin(error["loc"], env)
            if variable is not None:
                key += f" (from {variable})"
            problems.append((key, _describe(error)))
        raise ConfigError(source, problems) from None
    problems += settings.cross_check()
    if problems:
        raise ConfigError(source, problems)
    for name, backend in settings.backends.items():
        if backend.authkey is not None:
            logger.warning(
                "%s: backends.%s.authkey: the key is written in the configuration; "
                "prefer authkey_env or authkey_file",
                source,
                name,
            )
    return settings


class _Unreadable(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _read_authkey(backend: BackendSettings, environ: Mapping[str, str]) -> bytes | None:
    if backend.authkey_env is not None:
        text = environ.get(backend.authkey_env)
        if not text:
            raise _Unreadable(
                "authkey_env", f"{_shown_variable(backend.authkey_env)} is unset or empty"
            )
        return os.fsencode(text)
    if backend.authkey_file is not None:
        try:
            key = backend.authkey_file.read_bytes()
        except OSError as exc:
            raise _Unreadable(
                "authkey_file", f"cannot read {_shown_path(backend.authkey_file)}: {exc.strerror}"
            ) from None
        # Secret files usually end with the newline an editor or echo added.
        key = key.rstrip(b"\r\n")
        if not key:
            raise _Unreadable("authkey_file", f"{_shown_path(backend.authkey_file)} is empty")
        return key
    if backend.authkey is not None:
        key = backend.authkey.get_secret_value().encode("utf-8")
        if not key:
            raise _Unreadable("authkey", "the key is empty")
        return key
    return None


def read_authkeys(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, bytes | None]:
    """Check the settings as a whole, then read every backend's authkey, by backend name.

    The one collector of the problems that the tables cannot find alone, and
    the one place authkeys are read: :class:`gateway.state.GatewayState` calls
    it once, when it is built, so that a missing variable or key file stops
    the start-up instead of the first call. ``None`` means that backend
    expects no key. The keys are kept out of every ``repr`` and log line.

    Raises:
        ConfigError: ``default_backend`` or an API key names no backend
            (:meth:`Settings.cross_check`), or authkeys cannot be read; all
            of them in one error.
    """
    env = os.environ if environ is None else environ
    problems = settings.cross_check()
    keys: dict[str, bytes | None] = {}
    for name, backend in settings.backends.items():
        try:
            keys[name] = _read_authkey(backend, env)
        except _Unreadable as exc:
            problems.append((f"backends.{name}.{exc.key}", exc.message))
    if problems:
        raise ConfigError("configuration", problems)
    return keys
