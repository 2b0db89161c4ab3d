"""Helpers of the stream tests: read NDJSON items and SSE events off a real response."""

from __future__ import annotations

import json
from typing import Any

import httpx


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
