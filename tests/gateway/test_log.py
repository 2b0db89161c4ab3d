"""gateway.log: credentials taken out of every record, text arguments escaped."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.log import REDACTED, configure_logging, escape, log_access, redact

SECRET = "s3cr3t-Key_value"


@pytest.mark.parametrize(
    "line",
    [
        f"< GET /ws?access_token={SECRET} HTTP/1.1",
        f"< GET /ws?a=1&access_token={SECRET}&b=2 HTTP/1.1",
        f"/ws?access%5Ftoken={SECRET}",
        f"/ws?%61ccess_token={SECRET}",
        f"/ws?ACCESS_TOKEN={SECRET}",
        f"< Authorization: Bearer {SECRET}",
        f"< authorization: {SECRET}",
        f"> Proxy-Authorization: Basic {SECRET}",
        f"[(b'host', b'gw'), (b'authorization', b'Bearer {SECRET}')]",
        f"{{'authorization': 'bearer {SECRET}'}}",
        f"token was Bearer {SECRET}.",
    ],
)
def test_credentials_are_redacted(line):
    clean = redact(line)
    assert SECRET not in clean
    assert REDACTED in clean


def test_other_text_is_left_as_it_is():
    for line in ("< GET /ws?result_format=tagged HTTP/1.1", "authorized", "a=b", "tokens=3"):
        assert redact(line) is line


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("/healthz", "/healthz"),
        ("/a\nb", "/a\\x0ab"),
        ("/a\r\nb", "/a\\x0d\\x0ab"),
        ('/a" 200 "b', '/a\\" 200 \\"b'),
        ("/a\\x0a", "/a\\\\x0a"),
        ("/\x00\x1b[31m", "/\\x00\\x1b[31m"),
        ("/a\u2028b\x85", "/a\\u2028b\\x85"),
        ("/帅哥", "/帅哥"),
    ],
)
def test_escape(text, escaped):
    assert escape(text) == escaped


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_record_passes_the_filter(fmt):
    stream = io.StringIO()
    remove = configure_logging("debug", fmt, stream=stream)
    try:
        logging.getLogger("websockets.server").debug(
            "< %s: %s", "Authorization", f"Bearer {SECRET}"
        )
        logging.getLogger("uvicorn.error").debug("< GET %s HTTP/1.1", f"/ws?access_token={SECRET}")
        logging.getLogger("uvicorn.error").info("path %s", "/x\nforged line")
        try:
            raise ValueError(f"header Authorization: Bearer {SECRET}")
        except ValueError:
            logging.getLogger("connbridge.gateway").exception("failed")
        log_access("id1", "GET", "/healthz\n2099 forged", "<unmatched>", 0.001, status=404)
    finally:
        remove()
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count(REDACTED) >= 3  # (the traceback quotes the raising line too)
    lines = output.splitlines()
    if fmt == "json":
        assert all(json.loads(line) for line in lines)
    else:
        assert not any(line.startswith(("forged", "2099")) for line in lines)
        assert '"GET /healthz\\x0a2099 forged" 404' in output
