"""Real clients read /stream: ``curl -N`` and Node's ``fetch``, run from the README's examples.

The examples in the README's "Streaming" section are taken as they are
written (only the gateway's address is replaced) and run against the real
gateway, with the API key ``my-api-key`` they use and the demo backend as
``demo``. ``curl -N`` must hand over each line as the backend produces it:
the first line arrives long before the backend has sent its last reply.
The ``EventSource`` example runs in Chromium (tests/browser).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest
from gateway_support import backend_config, serve_gateway, sha256_hex, wait_until
from stream_support import README_URL, readme_example

pytestmark = pytest.mark.timeout(60)

README_KEY = "my-api-key"
CURL = shutil.which("curl")
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


def settings(demo, tmp_path):
    return {
        "backends": {"demo": backend_config(demo, tmp_path, replies="many")},
        "auth": {"keys": [{"name": "readme", "sha256": sha256_hex(README_KEY)}]},
    }


async def settled(gw):
    pool = gw.state.backends["demo"].running_pool()
    await wait_until(lambda: _at_rest(pool), what="the pool back at its baseline")


async def _at_rest(pool):
    stats = pool.stats()
    return stats["in_use"] == 0 and stats["stalled_handshakes"] == 0


def test_the_readme_has_each_example():
    assert readme_example("sh", "curl -N")
    assert readme_example("js", "new EventSource(")
    assert readme_example("js", "await fetch(")


@pytest.mark.skipif(CURL is None, reason="needs curl (apt-get install -y curl)")
async def test_curl_reads_ndjson_line_by_line_as_the_backend_sends(demo, tmp_path):
    command = readme_example("sh", "curl -N")
    assert '"delay": 0.5' in command and '"count": 3' in command
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command.replace(README_URL, gw.url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        arrivals = []
        async with asyncio.timeout(20):
            while line := await process.stdout.readline():
                arrivals.append((time.monotonic(), json.loads(line)))
            assert await process.wait() == 0, await process.stderr.read()  # type: ignore[union-attr]
        items = [item for _, item in arrivals]
        assert items == [
            *({"result": {"seq": i, "value": "hi"}} for i in range(3)),
            {"end": {"reason": "count"}},
        ]
        # The backend waits 0.5 s before each reply after the first, so it sends its
        # last reply at least 1 s after its first: had curl (or the gateway) held the
        # output back, every line would arrive together.
        first, last = arrivals[0][0], arrivals[2][0]
        assert last - first >= 0.9, arrivals
        assert arrivals[1][0] - first >= 0.4, arrivals
        await settled(gw)


@pytest.mark.skipif(NODE is None, reason="needs node (Node 18+ has fetch)")
async def test_node_fetch_reads_a_post_stream(demo, tmp_path):
    script = readme_example("js", "await fetch(")
    async with serve_gateway(settings(demo, tmp_path)) as gw:
        process = await asyncio.create_subprocess_exec(
            "node",
            "--input-type=module",
            "-e",
            script.replace(README_URL, gw.url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        items = [json.loads(line) for line in out.decode().splitlines()]
        assert items == [
            *({"result": {"seq": i, "value": "hi"}} for i in range(3)),
            {"end": {"reason": "count"}},
        ]
        # A problem before the first reply is thrown, with its body.
        process = await asyncio.create_subprocess_exec(
            "node",
            "--input-type=module",
            "-e",
            script.replace(README_URL, gw.url).replace(README_KEY, "wrong-key"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            out, err = await process.communicate()
        assert process.returncode != 0 and b"unauthorized" in err, err.decode()
        await settled(gw)
