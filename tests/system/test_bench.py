"""Smoke test of the benchmark harness at tiny sizes, so it cannot rot. It asserts it works, never timings."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import ROOT, clear_database, python_env
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    return start_stack(with_ws=True)


def bench(*argv: str, timeout: float = 120) -> dict:
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", *argv], cwd=ROOT, env=python_env({}), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figure = json.loads((ROOT / "bench-results" / f"{argv[0]}.json").read_text())
    assert figure["machine"]["cores"] >= 1
    return figure


def test_ingest_and_batch_figures(stack: Stack) -> None:
    ingest = bench("ingest", "--ingest-url", stack.ingest_url, "--seconds", "1", "--procs", "1", "--conns", "2")
    assert ingest["accepted_202"] > 0 and ingest["p99_ms"] >= ingest["p50_ms"] > 0
    batch = bench("batch", "--ingest-url", stack.ingest_url, "--seconds", "1", "--procs", "1", "--batch", "10")
    assert batch["messages_per_s"] > 0 and batch["statuses"].keys() == {"202"}


def test_latency_and_fanout_figures(stack: Stack) -> None:
    latency = bench("latency", "--ingest-url", stack.ingest_url, "--ws-url", stack.ws_url, "--rate", "20",
                    "--seconds", "1")  # fmt: skip
    assert latency["received"] == latency["posted"] > 0
    fanout = bench("fanout", "--ws-url", stack.ws_url, "--redis-url", stack.env["REDIS_URL"], "--clients", "10",
                   "--procs", "1", "--rates", "10", "--seconds", "1")  # fmt: skip
    [row] = fanout["rows"]
    assert row["delivered"] > 0 and row["server_rss_mib"] > 0


def test_sustained_figure(stack: Stack, tmp_path: Path) -> None:
    chart = tmp_path / "backlog.png"
    sustained = bench(
        "sustained", "--ingest-url", stack.ingest_url, "--list-url", stack.list_url,
        "--redis-url", stack.env["REDIS_URL"], "--rate", "40", "--seconds", "2", "--drain", "3", "--plot", str(chart),
    )  # fmt: skip
    assert sustained["accepted_per_s"] > 0 and sustained["lag_samples_listed"] > 0
    assert chart.stat().st_size > 1000


def test_persist_figure(sqlite_url: str, redis_server) -> None:
    clear_database(sqlite_url)
    persist = bench("persist", "--count", "300", "--batch", "10", "--channels", "3", "--workers", "2",
                    "--redis-url", redis_server.url, "--database-url", sqlite_url)  # fmt: skip
    assert persist["messages"] == 300 and persist["rows_per_s"] > 0 and persist["worker_cpu_ms_per_1000_rows"] > 0
    assert persist["channels"] == 3 and persist["worker_instances"] == 2
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        # Folded or not yet (the workers fold every second and may stop first): channels plus deltas.
        counts = dict(
            conn.exec_driver_sql(
                "SELECT name, SUM(messages) FROM (SELECT name, messages FROM channels "
                "UNION ALL SELECT channel, messages FROM channel_deltas) GROUP BY name"
            ).all()
        )
    engine.dispose()
    assert counts == {"bench-0": 100, "bench-1": 100, "bench-2": 100}


def test_commits_figure(sqlite_url: str) -> None:
    """Single-record saves from several threads, each a transaction of the one channel, numbered in order."""
    clear_database(sqlite_url)
    commits = bench("commits", "--threads", "2", "--count", "40", "--database-url", sqlite_url)
    assert commits["transactions"] == 40 and commits["transactions_per_s"] > 0 and commits["threads"] == 2
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT seq, channel_offset, channel FROM messages ORDER BY seq").all()
    engine.dispose()
    expected = [(n, n, "bench-commits") for n in range(1, 41)]
    assert [(row.seq, row.channel_offset, row.channel) for row in rows] == expected


@contextlib.contextmanager
def stack_running_here() -> Iterator[None]:
    """Hold the checkout's local-stack lock as a running ``scripts/run.sh`` does (or find it already held)."""
    path = ROOT / "var" / "local-stack.env"
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as file:
        with contextlib.suppress(BlockingIOError):  # a developer's stack holds it: run.sh is refused all the same
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        yield


def test_cost_fails_at_once_with_run_sh_s_refusal_when_a_stack_runs_from_this_checkout() -> None:
    """The benchmark starts its own run.sh: refused beside a running one, it says why within seconds."""
    started = time.monotonic()
    with stack_running_here():
        result = subprocess.run(
            [sys.executable, "scripts/bench.py", "cost", "--rate", "20", "--seconds", "1", "--drain", "5"],
            cwd=ROOT, env=python_env({}), capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert time.monotonic() - started < 30, "waited on a run.sh that had already stopped"
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: bash scripts/run.sh exited (1) before http://127.0.0.1:"), line
    assert ": run.sh: scripts/run.sh is already running from this checkout (pid " in line, line


def test_cost_figure_counts_every_process_of_both_stacks_and_their_maximum_rates() -> None:
    """Our stack (scripts/run.sh), the baseline and the floor handler, each measured; the maximum rates; ratios."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk): --max saturates the stacks with it")
    cost = bench("cost", "--baseline", "--max", "--max-conns", "4", "--rate", "20", "--seconds", "2",
                 "--settle", "0.5", "--warmup", "0.5", "--drain", "120", timeout=600)  # fmt: skip
    for run in ("ours_cold", "baseline_cold"):  # the load right after start-up, apart from the measured one
        assert cost[run]["stored"] == cost[run]["accepted"] > 0, run
    for run in ("ours", "baseline"):
        assert cost[run]["stored"] == cost[run]["accepted"] > 0, run
        assert cost[run]["post_to_stored_p99_ms"] >= cost[run]["post_to_stored_p50_ms"] > 0, run
        most = cost[f"{run}_max"]
        assert most["drained"] and most["stored"] >= most["accepted"] > 0 and most["end_to_end_per_s"] > 0, most
    fractions = cost["ours_at"]
    assert fractions.keys() == {"50%", "80%"}
    assert fractions["80%"]["offered_per_s"] > fractions["50%"]["offered_per_s"] > 0
    assert all(run["stored"] == run["accepted"] > 0 for run in fractions.values()), fractions
    assert {"honcho", "ingestion_api", "list_api", "worker", "wsserver", "redis"} <= cost["ours"]["cpu_seconds"].keys()
    assert {"baseline_api", "worker", "redis"} <= cost["baseline"]["cpu_seconds"].keys()
    assert cost["floor"]["accepted"] > 0 and cost["floor"]["cpu_seconds_per_1000"]["floor_api"] > 0
    assert cost["floor_max"]["per_s"] > 0 and cost["floor_max"]["answers"]["other"] == 0, cost["floor_max"]
    assert "max_end_to_end_rate_vs_floor_max" in cost["ratios"]
    assert all(isinstance(value, float) and value > 0 for value in cost["ratios"].values()), cost["ratios"]


def test_floors_figure_measures_the_floor_handler_under_each_server() -> None:
    floors = bench("floors", "--rate", "30", "--seconds", "1", "--rounds", "1", "--settle", "0.2",
                   "--max-conns", "4", timeout=300)  # fmt: skip
    assert floors["servers"].keys() == {"gunicorn sync", "gunicorn gthread 2 x 8", "granian wsgi"}
    for server, (run,) in floors["servers"].items():
        assert run["max_per_s"] > 0 and run["answers"]["other"] == 0, server
        assert run["cpu_ms_per_request"] > 0, server
