"""The committed OpenAPI document, ``openapi/openapi.json``, and how it is written.

``connbridge-gateway openapi [PATH]`` (``make openapi``) writes the OpenAPI
document of the app built from :data:`EXAMPLE_CONFIG` to ``PATH`` (default
``openapi/openapi.json``): a fixed configuration, so the file is the same on
every machine, with one backend that has a ``payload_schema`` so that the
per-backend operation appears, and one manager backend for the object
routes. ``tests/gateway/test_openapi.py`` fails when
the committed file differs from what the app serves.

A reader finds the file in the repository and may take ``adder`` for their
own backend, so its ``info.description`` opens with :data:`EXAMPLE_NOTE`:
what it is, and that their gateway serves their own document at
``/openapi.json``.

A leaf: it builds an app, so only the command line imports it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from .app import create_app
from .settings import Settings

__all__ = [
    "DEFAULT_OUTPUT",
    "EXAMPLE_CONFIG",
    "EXAMPLE_NOTE",
    "example_app",
    "example_settings",
    "mark_as_example",
    "render_openapi",
    "write_openapi",
]

#: Where ``make openapi`` writes the document.
DEFAULT_OUTPUT: Final = "openapi/openapi.json"

#: The configuration behind ``openapi/openapi.json``. Nothing in it is read
#: from the machine: no authkey source (the document never shows one), and
#: the API key entry holds the SHA-256 of the string "example-key". The key
#: lists its backends rather than ``"*"``: a scoped key is what makes a
#: call's 403 possible, so the example shows where it can come.
EXAMPLE_CONFIG: Final[dict[str, Any]] = {
    "gateway": {"default_backend": "adder"},
    "backends": {
        "adder": {
            "address": "127.0.0.1:11111",
            "call_timeout": 5.0,
            "max_connections": 4,
            "payload_schema": {
                "title": "Two integers to add",
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "examples": [[5, 6]],
            },
        },
        "jobs": {
            "kind": "manager",
            "address": "127.0.0.1:50000",
            "typeids": ["get_queue"],
            "methods": {"get_queue": ["put", "get", "qsize", "empty"]},
            "object_ttl": 600.0,
        },
    },
    "auth": {
        "keys": [
            {
                "name": "example",
                "sha256": hashlib.sha256(b"example-key").hexdigest(),
                "backends": ["adder", "jobs"],
            }
        ]
    },
}


#: The opening of the committed document's ``info.description``.
EXAMPLE_NOTE: Final = """\
**This document is an example.** It was generated (`make openapi`) from an example
configuration: a backend `adder` whose payload is two integers, a manager backend `jobs`,
one API key. It is not the document of your gateway: yours serves its own, for your
backends and keys, at `/openapi.json` (shown at `/docs`); generate clients from that one.
"""


class _ExampleSettings(Settings):
    """:class:`Settings` made from their arguments only: no ``CONNBRIDGE_*`` variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def example_settings() -> Settings:
    """:data:`EXAMPLE_CONFIG` as settings, whatever the environment says.

    Raises:
        pydantic.ValidationError: only if :data:`EXAMPLE_CONFIG` itself is broken.
    """
    return _ExampleSettings(**EXAMPLE_CONFIG)


def mark_as_example(app: FastAPI) -> None:
    """Open the description of ``app``'s document with :data:`EXAMPLE_NOTE`."""
    app.description = EXAMPLE_NOTE + "\n" + app.description


def example_app() -> FastAPI:
    """The app of :data:`EXAMPLE_CONFIG` whose document is ``openapi/openapi.json``."""
    app = create_app(example_settings())
    mark_as_example(app)
    return app


def render_openapi(app: FastAPI) -> str:
    """The OpenAPI document of ``app`` as written to ``openapi/openapi.json``.

    Sorted keys, two-space indent, non-ASCII kept, one trailing newline: the
    same document always gives the same bytes.
    """
    # Through JSON first, as the app serves it: that turns any int keys
    # (status codes) into strings, which sort_keys needs.
    document = json.loads(json.dumps(app.openapi()))
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_openapi(output: Path) -> bool:
    """Write the example app's document to ``output``; False when it was already up to date.

    Raises:
        OSError: ``output`` cannot be written.
    """
    text = render_openapi(example_app())
    if output.is_file() and output.read_text(encoding="utf-8") == text:
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return True
