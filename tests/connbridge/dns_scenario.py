"""Run inside a private mount namespace by test_pool_dns.py; not a test module itself.

It bind-mounts a file of its own over /etc/hosts, which only this namespace
sees, points one host name at changing sets of loopback addresses (each
served by its own demo backend) and prints what the pool did as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

from connbridge.demo import spawn_demo_backend
from connbridge.pool import Pool, PoolSettings

NAME = "replicas.connbridge.test"
KEY = b"dns-scenario-key"
WAIT = 10.0  # bound for each change to be picked up


def free_port(hosts: list[str]) -> int:
    """A port free on every host (tried a bounded number of times)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on every address")


def point_name_at(hosts_file: str, ips: list[str]) -> None:
    # Written in place: the bind mount follows the inode, not the path.
    with open(hosts_file, "w", encoding="ascii") as f:
        f.write("127.0.0.1 localhost\n")
        f.writelines(f"{ip} {NAME}\n" for ip in ips)


async def targets(pool: Pool) -> set[str]:
    return {t["address"] for t in pool.stats()["addresses"] if not t.get("stale")}


async def wait_for_targets(pool: Pool, expected: set[str]) -> float:
    started = time.monotonic()
    while await targets(pool) != expected:
        if time.monotonic() - started > WAIT:
            raise TimeoutError(f"targets stayed {await targets(pool)}, expected {expected}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def forgotten(pool: Pool, address: str) -> bool:
    """True once the pool no longer lists ``address`` at all (bounded wait)."""
    started = time.monotonic()
    while any(t["address"] == address for t in pool.stats()["addresses"]):
        if time.monotonic() - started > WAIT:
            return False
        await asyncio.sleep(0.05)
    return True


async def pids_answering(pool: Pool, calls: int) -> set[int]:
    # Slow calls in parallel, so that every target with room takes some.
    answers = await asyncio.gather(
        *(pool.call({"op": "sleep", "seconds": 0.05, "value": None}) for _ in range(calls))
    )
    assert all(a is None for a in answers)
    return {p for p in await asyncio.gather(*(pool.call({"op": "pid"}) for _ in range(calls)))}


async def scenario(hosts_file: str, port: int, pids: dict[str, int]) -> dict[str, object]:
    a, b = (f"127.0.0.2:{port}", f"127.0.0.3:{port}")
    report: dict[str, object] = {"pids": pids}
    settings = PoolSettings(max_connections=8, dns_interval=0.2, handshake_timeout=2.0)
    pool = Pool(f"{NAME}:{port}", authkey=KEY, settings=settings)
    await pool.start()
    try:
        report["first"] = sorted(await targets(pool))
        report["first_pids"] = sorted(await pids_answering(pool, 16))
        point_name_at(hosts_file, ["127.0.0.2", "127.0.0.3"])
        await wait_for_targets(pool, {a, b})
        report["both"] = sorted(await targets(pool))
        # The pool sends calls to the target with the fewest in flight, so
        # 32 parallel calls reach the new address too.
        both: set[int] = set()
        for _ in range(5):
            both |= await pids_answering(pool, 32)
            if len(both) == 2:
                break
        report["both_pids"] = sorted(both)
        point_name_at(hosts_file, ["127.0.0.3"])
        await wait_for_targets(pool, {b})
        report["last"] = sorted(await targets(pool))
        report["last_pids"] = sorted(await pids_answering(pool, 16))
        report["stale_then_forgotten"] = await forgotten(pool, a)
        # The name stops resolving: the pool keeps what it had and still works.
        point_name_at(hosts_file, [])
        failed_at = time.monotonic()
        while pool.health().get("error") is None:
            if time.monotonic() - failed_at > WAIT:
                raise TimeoutError("the failed resolution was never reported")
            await asyncio.sleep(0.05)
        report["kept_on_failure"] = sorted(await targets(pool))
        report["resolve_error"] = pool.health()["error"]
        report["pids_on_failure"] = sorted(await pids_answering(pool, 4))
    finally:
        await pool.close()
    report["set_aside"] = await set_aside(hosts_file, port)
    return report


async def set_aside(hosts_file: str, port: int) -> dict[str, object]:
    """A name with a second address that nothing listens on (a dual-stack name, say)."""
    point_name_at(hosts_file, ["127.0.0.3", "127.0.0.9"])
    settings = PoolSettings(max_connections=2, dns_interval=0.2, connect_timeout=0.5)
    pool = Pool(f"{NAME}:{port}", authkey=KEY, settings=settings)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "127.0.0.9" in record.getMessage():
                lines.append(f"{record.levelname} {record.getMessage()}")

    handler = Collect()
    logging.getLogger("connbridge.pool").addHandler(handler)
    logging.getLogger("connbridge.pool").setLevel(logging.INFO)
    await pool.start()
    try:
        started = time.monotonic()
        while f"127.0.0.9:{port}" in await targets(pool):
            if time.monotonic() - started > 60:
                raise TimeoutError("the silent address was never set aside")
            await pids_answering(pool, 2)
            await asyncio.sleep(0.05)
        # It stays out, and quiet, across further resolutions and calls.
        settled = len(lines)
        for _ in range(10):
            await pids_answering(pool, 2)
            await asyncio.sleep(0.1)
        return {
            "targets": sorted(await targets(pool)),
            "lines": lines,
            "lines_after": len(lines) - settled,
            "errors": pool.stats()["errors"],
        }
    finally:
        await pool.close()
        logging.getLogger("connbridge.pool").removeHandler(handler)


def main() -> int:
    with ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
        hosts_file = os.path.join(workdir, "hosts")
        point_name_at(hosts_file, ["127.0.0.2"])
        subprocess.run(["mount", "--bind", hosts_file, "/etc/hosts"], check=True)
        port = free_port(["127.0.0.2", "127.0.0.3"])
        backends = {
            ip: stack.enter_context(spawn_demo_backend(f"{ip}:{port}", KEY))
            for ip in ("127.0.0.2", "127.0.0.3")
        }
        pids = {ip: backend.pid for ip, backend in backends.items()}
        report = asyncio.run(scenario(hosts_file, port, pids))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
