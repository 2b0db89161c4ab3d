"""Clients generated from the OpenAPI document, by tools nobody on the project wrote.

- **TypeScript**: ``openapi-typescript`` (7.x, default options) turns the
  document into types; ``clients/call_gateway.ts`` builds a ``/compute`` body
  ``{payload: [5, 6]}`` and reads typed fields of ``/healthz`` and
  ``/readyz`` through them; ``tsc --strict`` must compile it, and node runs it
  against the gateway.
- **Python**: ``openapi-python-client`` generates a package;
  ``clients/call_gateway.py`` calls ``/compute`` with it, gets a refusal as a
  typed problem, and reads ``/readyz`` as typed objects.

Both are generated from the document a real gateway process serves (a real
demo backend behind it, one scoped API key), and both are generated from the
committed ``openapi/openapi.json`` too (compiled and imported; it describes
an example, so nothing calls it).

The generators need node, npm and downloads, so these tests run only when
asked: ``make test-clients`` installs the pinned tools under
``build/clients`` and sets ``CONNBRIDGE_CLIENTS=1``. In a plain ``make
test`` they are reported as skipped with that reason; asked for with the
tools missing, they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import PAIR_SCHEMA, sha256_hex
from process_support import gateway_process, write_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROGRAMS = HERE / "clients"
COMMITTED = ROOT / "openapi" / "openapi.json"
ENABLE = "CONNBRIDGE_CLIENTS"
TOOLS = Path(os.environ.get("CONNBRIDGE_CLIENT_TOOLS", ROOT / "build" / "clients"))
OPENAPI_TYPESCRIPT = TOOLS / "node" / "node_modules" / ".bin" / "openapi-typescript"
TSC = TOOLS / "node" / "node_modules" / ".bin" / "tsc"
TOOLS_PYTHON = TOOLS / "venv" / "bin" / "python"
OPENAPI_PYTHON_CLIENT = TOOLS / "venv" / "bin" / "openapi-python-client"
API_KEY = "generated-clients-key"

pytestmark = [
    pytest.mark.clients,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get(ENABLE) != "1",
        reason=f"generated clients: run them with `make test-clients` (or {ENABLE}=1 "
        "with the generators installed under build/clients)",
    ),
]


@pytest.fixture(scope="module")
def tools() -> None:
    """The generators; asked for and missing is a failure, not a skip."""
    missing = [
        str(path)
        for path in (OPENAPI_TYPESCRIPT, TSC, TOOLS_PYTHON, OPENAPI_PYTHON_CLIENT)
        if not os.access(path, os.X_OK)
    ]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run make test-clients", pytrace=False)


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a tool; its output is the failure message when it fails."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command[0]} exited with {done.returncode}:\n{output}"
    return output


def typescript_client(document: Path, workdir: Path) -> Path:
    """Generate ``api.ts`` (default options) and compile ``call_gateway.ts`` against it."""
    workdir.mkdir()
    run(OPENAPI_TYPESCRIPT, document, "--output", workdir / "api.ts", cwd=workdir)
    (workdir / "call_gateway.ts").write_bytes((PROGRAMS / "call_gateway.ts").read_bytes())
    compiled = workdir / "out"
    # Strict, and no @types packages: the program declares what it uses of node.
    options = {
        "strict": True,
        "target": "es2022",
        "module": "commonjs",
        "lib": ["es2022", "dom"],
        "types": [],
        "outDir": str(compiled),
    }
    tsconfig = {"compilerOptions": options, "files": ["call_gateway.ts"]}
    (workdir / "tsconfig.json").write_text(json.dumps(tsconfig))
    run(TSC, "--project", workdir, cwd=workdir)
    return compiled / "call_gateway.js"


def python_client(document: Path, workdir: Path) -> Path:
    """Generate the package with ``openapi-python-client``; no warning allowed."""
    workdir.mkdir()
    # Its ruff post-processing is in the tools' environment.
    env = {**os.environ, "PATH": f"{TOOLS_PYTHON.parent}{os.pathsep}{os.environ['PATH']}"}
    output = run(
        OPENAPI_PYTHON_CLIENT,
        "generate",
        "--path",
        document,
        "--meta",
        "none",
        cwd=workdir,
        env=env,
    )
    assert "warning" not in output.lower(), output
    package = workdir / "connbridge_gateway_client"
    assert (package / "api" / "compute" / "compute.py").is_file(), output
    return workdir


def gateway_config(tmp_path: Path, backend: Any) -> Path:
    """Backend ``adder`` (pairs of integers) and one key scoped to it."""
    schema = "\n".join(
        f"{key} = {json.dumps(value)}" for key, value in PAIR_SCHEMA.items() if key != "items"
    )
    extra = (
        "[backends.adder.payload_schema]\n"
        f"{schema}\n"
        'items = { type = "integer" }\n'
        "[[auth.keys]]\n"
        'name = "clients"\n'
        f'sha256 = "{sha256_hex(API_KEY)}"\n'
        'backends = ["adder"]\n'
    )
    return write_config(tmp_path, backend, extra=extra)


async def test_clients_generated_from_the_served_document_call_the_gateway(
    tools, start_backend, tmp_path
):
    backend = start_backend("demo")
    config = gateway_config(tmp_path, backend)
    async with gateway_process("--config", str(config), "--port", "0") as gateway:
        url = await gateway.listening()
        async with httpx.AsyncClient(base_url=url) as client:
            served = await client.get("/openapi.json")
        assert served.status_code == 200
        document = tmp_path / "openapi.json"
        document.write_bytes(served.content)

        program = typescript_client(document, tmp_path / "ts")
        seen = json.loads(run("node", program, url, API_KEY, cwd=tmp_path))
        assert seen == {
            "status": 200,
            "result": 11,
            "backend": "adder",
            "health": "ok",
            "readiness": [{"name": "ready:adder", "ready": True, "status": "up", "state": "up"}],
            "unused": [5, 6],
        }

        package = python_client(document, tmp_path / "py")
        script = PROGRAMS / "call_gateway.py"
        seen = json.loads(run(TOOLS_PYTHON, script, package, url, API_KEY, cwd=tmp_path))
        assert seen == {
            "result": 11,
            "backend": "adder",
            "refused": [422, "https://connbridge.dev/problems/invalid-payload"],
            "health": "ok",
            "ready": "ready",
            "adder": [True, "up", ["up"]],
        }
        gateway.proc.terminate()
        assert await gateway.wait() == 0, gateway.output()


def test_clients_generate_from_the_committed_document(tools, tmp_path):
    typescript_client(COMMITTED, tmp_path / "ts")
    package = python_client(COMMITTED, tmp_path / "py")
    # Importable, and the readiness object typed down to each backend's entry.
    shown = run(
        TOOLS_PYTHON,
        "-c",
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from connbridge_gateway_client.api.compute import compute_on_adder\n"
        "from connbridge_gateway_client.models import Readiness, ReadinessBackends\n"
        "print(Readiness.__annotations__['backends'])\n"
        "print(ReadinessBackends.__annotations__['additional_properties'])",
        package,
        cwd=tmp_path,
    )
    assert shown.splitlines() == ["ReadinessBackends", "dict[str, BackendReadiness]"], shown
