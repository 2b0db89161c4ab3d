"""Helpers of the stream tests: read NDJSON items and SSE events off a real response."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
#: The gateway's address in the README's examples (tests put the real one in).
README_URL = "http://127.0.0.1:8000"


def readme_example(language: str, marker: str) -> str:
    """The one fenced ``language`` block of the README's "Streaming" section with ``marker``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Streaming\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"the README's Streaming section has no single {language} {marker}"
    return str(found[0])


def stream_op(count: int, value: object = "v", delay: float = 0.0) -> dict[str, Any]:
    """The demo backend's ``stream`` operation: ``count`` replies ``{"seq", "value"}``."""
    return {"op": "stream", "count": count, "value": value, "delay": delay}


def results(count: int, value: object = "v") -> list[dict[str, Any]]:
    return [{"result": {"seq": i, "value": value}} for i in range(count)]


async def ndjson_items(response: httpx.Response) -> list[Any]:
    """Every line of an NDJSON response, parsed; each line must be one whole JSON object."""
    assert response.headers["content-type"] == "application/x-ndjson"
    items = []
    async for line in response.aiter_lines():
        assert line, "an empty line in an NDJSON stream"
        items.append(json.loads(line))
    return items


async def post_ndjson(client: httpx.AsyncClient, path: str, body: Any) -> list[Any]:
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        return await ndjson_items(response)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body: ``{"event", "id", "data", "comments"}`` (data parsed)."""
    events = []
    comments = 0
    for block in text.split("\n\n"):
        if not block:
            continue
        event: dict[str, Any] = {"event": "message", "id": None}
        data = []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            if name == "data":
                data.append(value)
            else:
                event[name] = value
        if data:
            event["data"] = json.loads("\n".join(data))
            event["comments"] = comments
            comments = 0
            events.append(event)
    return events
