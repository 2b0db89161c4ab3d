"""A smoke run of the bench harness: real servers, real wrk, tiny sizes.

It checks the parts a full ``make bench`` depends on, in seconds: the
gateway with its ceiling route starts and answers, wrk's script reports its
summary (throughput, a response limit that ends the run early, pacing), the
WebSocket driver works against the gateway and the echo server, and a table
and chart come out of the rows, informational ones included. The newer
groups' rows are built with tiny sizes: the ``remote`` rows through the
latency relay (pipelined ones not measured until the gateway has the
setting) and the load curve, with its chart.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bench import remote, servers
from bench.chart import write_chart
from bench.http import direct_round_trips, paced_direct, run_wrk
from bench.load import load_rows
from bench.manager import create_echo, native_calls_per_second, write_manager_config
from bench.report import comparison, print_table
from bench.syscalls import parse_summary
from bench.ws import calls_per_second

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        pytest.skip("wrk is not installed (make bench installs it with apt-get as root)")
    return found


def test_harness_end_to_end(wrk: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with servers.demo_backend() as backend:
        config = servers.write_config(tmp_path, backend, log_level="warning")
        with servers.gateway(config, backend, tmp_path) as gateway:
            status, reply = servers.http_call(gateway.url, "POST", "/bench/noop", b'{"payload": 1}')
            assert (status, reply) == (200, b'{"result":1}')
            assert servers.rss_mib(gateway.pid) > 10

            body = tmp_path / "body.json"
            body.write_bytes(b'{"payload": [5, 6]}')
            noop = run_wrk(wrk, gateway.url + "/bench/noop", body, seconds=1, connections=4)
            compute = run_wrk(wrk, gateway.url + "/compute", body, seconds=1, connections=4)
            assert noop.requests > 0 and compute.requests > 0

            started = time.monotonic()
            limited = run_wrk(wrk, gateway.url + "/compute", body, seconds=30, limit=200)
            assert limited.requests >= 200
            assert time.monotonic() - started < 15  # the limit ended it, not -d

            paced = run_wrk(wrk, gateway.url + "/compute", body, seconds=2, connections=1, rate=50)
            assert 80 <= paced.requests <= 110  # 100 at 50/s, give or take the edges
            p50, p99 = paced_direct(backend, 100, 0.5)
            assert 0 < p50 <= p99

            # An error answer fails the run rather than counting as a figure (here
            # 400: the body is not JSON).
            (tmp_path / "bad.json").write_bytes(b"not json")
            with pytest.raises(RuntimeError, match="'status'"):
                run_wrk(wrk, gateway.url + "/compute", tmp_path / "bad.json", seconds=1)

            with servers.echo_server(tmp_path) as echo:
                assert calls_per_second(echo.url, 300, [5, 6]) > 0
            ws_url = gateway.url.replace("http://", "ws://") + "/ws"
            assert calls_per_second(ws_url, 300, 11) > 0
            assert direct_round_trips(backend, 500) > 0
        assert gateway.proc.poll() is not None  # ended on the way out

    rows = [
        comparison("throughput", [compute.rate] * 3, [noop.rate] * 3, 0.8, unit="req/s"),
        comparison("informational", [2.0, 1.0, 3.0], [1.0] * 3, None, unit="ms", note="hi"),
        comparison("memory", [50.0] * 3, [80.0] * 3, 1.0, unit="MiB", higher_is_better=False),
    ]
    assert rows[1]["met"] is None and rows[1]["ours"] == 2.0
    assert rows[2]["met"] is True
    print_table(rows)
    out = capsys.readouterr().out
    assert "info  [1]" in out and "[1] hi" in out and "<= 1x ok" in out
    chart = write_chart(rows, "smoke", tmp_path / "chart.png")
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_stream_row_reads_whole_streams(tmp_path: Path) -> None:
    from bench.stream import direct_replies_per_second, gateway_replies_per_second, stream_rows

    with servers.demo_backend() as backend:
        config = servers.write_config(tmp_path, backend, log_level="warning")
        with servers.gateway(config, backend, tmp_path) as gateway:
            # More than one stream's worth (10,000 per request), and a partial last one.
            assert gateway_replies_per_second(gateway.url, 10_500) > 0
            assert direct_replies_per_second(backend, 10_500) > 0
            rows = stream_rows(gateway, backend, 2_000)
    assert rows[0]["unit"] == "replies/s" and rows[0]["target"] == 0.3


def test_manager_row_parts(wrk: str, tmp_path: Path) -> None:
    with servers.manager_backend(tmp_path) as backend:
        assert native_calls_per_second(backend, 200) > 0
        config = write_manager_config(tmp_path, backend, log_level="warning")
        with servers.gateway(config, backend, tmp_path) as gateway:
            path = create_echo(gateway)
            body = tmp_path / "echo.json"
            body.write_bytes(b'{"args": [11]}')
            assert run_wrk(wrk, gateway.url + path, body, seconds=1, connections=4).requests > 0


def _check_rows(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    """The rows print, and chart (with the load curve, when there is one)."""
    print_table(rows)
    chart = write_chart(rows, "smoke", tmp_path / "rows.png")
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_remote_rows_without_pipelining(
    wrk: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The classic server behind the relay: the direct floor and a fresh
    # gateway (pipeline unset) per run; the pipelined row stays in the table
    # as not measured. The server must be alive after every run (classic_rows
    # checks it, and raises if it died).
    rows = remote.classic_rows(wrk, tmp_path, pipeline=False, seconds=1, direct_calls=50, runs=1)
    assert [r["ratio"] is None for r in rows] == [True, False]
    assert rows[0]["target"] == 10.0 and "not measured" in rows[0]["note"]
    unpipelined = rows[1]
    assert unpipelined["ours"] > 0 and unpipelined["baseline"] > 0
    # Every side went through the relay, which spent CPU time on it.
    assert unpipelined["relay_cpu_seconds"]["baseline"][0] >= 0
    assert "relay CPU per run" in unpipelined["note"]
    # A round trip through the relay takes at least its 1 ms: one connection
    # cannot make more than 1,000 calls/s.
    assert unpipelined["baseline"] < 1000

    with servers.demo_backend() as backend:
        threaded = remote.threaded_rows(
            wrk, backend, tmp_path, pipeline=False, seconds=1, latency_seconds=0.5, runs=1
        )
    assert threaded[0]["ratio"] is None
    assert [r["row"].startswith(remote.LINK) for r in threaded] == [True] * 4
    direct_p50 = threaded[1]["baseline"]
    assert direct_p50 >= 1.0  # ms: the relay's round trip
    _check_rows(rows + threaded, tmp_path)
    out = capsys.readouterr().out
    assert "not measured  [1]" in out


@pytest.mark.skipif(
    not remote.pipelining_available(), reason="the gateway has no 'pipeline' key yet"
)
def test_remote_rows_pipelined(wrk: str, tmp_path: Path) -> None:
    rows = remote.classic_rows(wrk, tmp_path, pipeline=True, seconds=1, direct_calls=50, runs=1)
    assert [r["ratio"] is None for r in rows] == [False] * 3
    assert rows[0]["target"] == 10.0 and rows[0]["met"] is not None


def test_load_curve_rows(wrk: str, tmp_path: Path) -> None:
    with servers.demo_backend() as backend:
        config = servers.write_config(tmp_path, backend, log_level="warning")
        with servers.gateway(config, backend, tmp_path) as gateway:
            rows = load_rows(wrk, gateway, tmp_path, levels=(1, 4), seconds=1, runs=1)
    assert [r["curve"]["connections"] for r in rows] == [1, 4]
    assert rows[0]["ratio"] == 1.0
    for r in rows:
        assert 0 < r["curve"]["p50_ms"] <= r["curve"]["p99_ms"]
    _check_rows(rows, tmp_path)


STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 73.02    0.040281           6      6062           write
 21.87    0.012066           2      4086        18 read
  0.00    0.000002           2         1           mmap
------ ----------- ----------- --------- --------- ----------------
100.00    0.055168           4     10149        18 total
"""


def test_syscalls_summary_is_parsed() -> None:
    # strace -c's table, with and without an errors column; the total is left out.
    assert parse_summary(STRACE_SUMMARY) == {"write": 6062, "read": 4086, "mmap": 1}
    with pytest.raises(ValueError, match="no strace -c summary"):
        parse_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")
