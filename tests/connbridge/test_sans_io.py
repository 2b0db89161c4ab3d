"""The protocol core does no I/O: it imports neither asyncio nor socket."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
for name in ("asyncio", "socket", "selectors", "ssl"):
    sys.modules[name] = None  # any import of these now raises ImportError
import connbridge.frames, connbridge.handshake
print("ok")
"""


def test_core_imports_neither_asyncio_nor_socket() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_check_itself_catches_an_io_import() -> None:
    # The same guard refuses a module that does import socket.
    check = CHECK.replace(
        "import connbridge.frames, connbridge.handshake", "import connbridge.connection"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr
