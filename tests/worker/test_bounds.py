"""The worker's bounds under hostile load: how long one batch holds its messages, how much memory it takes.

Real processes (gunicorn, a Celery worker) on the session's Redis and
databases. Each test prints one figure line; run them alone with
``pytest tests/worker/test_bounds.py -s`` to see them.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import redis
import requests
import sqlalchemy as sa

from relay.broker.contract import make_celery, send_records
from relay.broker.dead_letters import DeadLetters
from relay.records import make_record, utc_now
from relay.settings import load_settings
from tests.helpers import (
    POISON_TRIGGER,
    celery_worker,
    clear_database,
    persist_pending,
    place,
    python_env,
    wait_until,
)
from tests.stack import running_stack

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MiB = 2**20
# Task messages of a dead (or too slow) batch come back after this: keep it short so a batch that
# outlived it would be seen handled twice within the test.
QUICK_REDELIVERY = {"CELERY_VISIBILITY_TIMEOUT": "5"}
# A small prefetch budget so the test overflows it several times with ~40 MB.
PREFETCH = {"WORKER_PREFETCH_BYTES": str(4 * MiB), "PERSIST_MESSAGE_MAX_BYTES": str(MiB // 4)}
CONCURRENCY = 2
# Worker main-process RSS per byte of task messages held prefetched: measured 3.75 to 3.9 (the raw
# message, its decoded envelope, body and records, and the pickled job for the pool); docs/operations.md.
RSS_PER_PREFETCHED_BYTE = 4
RSS_SLACK = 16 * MiB  # allocator and interpreter noise around the baseline


def is_poison(n: int) -> bool:
    return n % 10 in (1, 4, 7)  # 300 of every 1,000, spread out


@pytest.mark.parametrize("database", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_isolating_poison_outlives_no_visibility_timeout_and_others_keep_flowing(
    database: str, request: pytest.FixtureRequest, redis_url: str, log_dir: Path
) -> None:
    """A batch of 1,000 with 300 records the database rejects, with a 5 s visibility timeout: each rejected
    record is dead-lettered exactly once, the 700 others are stored once, and a message posted meanwhile
    is stored within seconds."""
    database_url = request.getfixturevalue(f"{database}_url")
    clear_database(database_url)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(POISON_TRIGGER[engine.dialect.name])
    client = redis.Redis.from_url(redis_url)
    dead_letters = DeadLetters(client, "dead_letters")
    try:
        with running_stack(database_url, redis_url, log_dir, env=QUICK_REDELIVERY) as stack:
            batch = [{"n": n, "kind": "poison" if is_poison(n) else "fine"} for n in range(1000)]
            started = time.monotonic()
            response = requests.post(f"{stack.ingest_url}/dummy/batch", json=batch, timeout=10)
            assert response.status_code == 202, response.text
            ids = response.json()["ids"]
            poison = {ids[n] for n in range(1000) if is_poison(n)}

            wait_until(lambda: dead_letters.count() > 0, timeout=30, interval=0.01, what="isolation under way")
            unrelated = stack.post({"unrelated": True})
            posted = time.monotonic()
            wait_until(
                lambda: requests.get(f"{stack.list_url}/messages/{unrelated}", timeout=5).status_code == 200,
                timeout=30,
                interval=0.02,
                what="the unrelated message stored",
            )
            latency = time.monotonic() - posted
            wait_until(
                lambda: dead_letters.count() >= 300 and len(stack.listed()) >= 701, timeout=40, what="the batch handled"
            )
            handled_in = time.monotonic() - started
            wait_until(
                lambda: client.llen("persist") == 0 and client.zcard("persist:pending") == 0,
                what="nothing queued, every record handled",
            )
            entries = dead_letters.entries(limit=10_000)
            dead_ids = [entry["record"]["id"] for entry in entries]
            stored = [message["id"] for message in stack.listed()]
            deferrals = stack.services["worker"].log().count("isolation ran out of time")
        print(
            f"\nFAULT poison isolation ({database}): 1000 records, 300 rejected, visibility 5 s: handled in"
            f" {handled_in:.1f}s ({deferrals} deferral(s)); dead-letter entries={len(entries)}"
            f" distinct={len(set(dead_ids))}; stored={len(stored)}; unrelated message stored after {latency:.2f}s"
        )
        assert len(dead_ids) == len(set(dead_ids)) == 300 and set(dead_ids) == poison
        assert len(stored) == len(set(stored)) == 701 and set(stored) == (set(ids) - poison) | {unrelated}
        assert latency < 5, "the unrelated message waited for the isolation"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS reject_poison")
        engine.dispose()


def _queued_settles(client: redis.Redis, seconds: float = 2.0) -> None:
    """Wait until the queue length has not changed for ``seconds``: the worker has prefetched all it may."""
    last, since = client.llen("persist"), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.2)
        now = client.llen("persist")
        if now != last:
            last, since = now, time.monotonic()


@pytest.mark.mysql
def test_worker_memory_stays_bounded_while_the_database_is_locked(
    mysql_url: str, redis_url: str, log_dir: Path
) -> None:
    """With the messages table locked, 160 task messages of ~250 KB arrive (40 MB, ten times the worker's
    prefetch budget): the worker's main process stays under its bound, and once unlocked all is stored once."""
    clear_database(mysql_url)
    client = redis.Redis.from_url(redis_url)
    pending = persist_pending(redis_url)
    celery = make_celery(load_settings(redis_url=redis_url))
    max_bytes = int(PREFETCH["PERSIST_MESSAGE_MAX_BYTES"])
    env = python_env({"SQLALCHEMY_DATABASE_URI": mysql_url, "REDIS_URL": redis_url, **PREFETCH})
    worker = celery_worker("worker", env, log_dir, CONCURRENCY).start()
    engine = sa.create_engine(mysql_url)

    def stored() -> tuple[int, int]:
        with engine.connect() as conn:
            return tuple(conn.exec_driver_sql("SELECT COUNT(*), COUNT(DISTINCT id) FROM messages").one())

    def enqueue(records: list[dict]) -> int:
        """Queue ``records`` as the ingestion API does: placed and pending, then task messages of at most max_bytes."""
        place(records)
        pipe = client.pipeline(transaction=True)
        pending.add(pipe, records)
        pipe.execute()
        return len(send_records(celery, "persist", records, max_bytes))

    try:
        enqueue([make_record({"warm": "up"}, utc_now())])
        wait_until(lambda: stored() == (1, 1), timeout=30, what="the worker up and storing")
        main = psutil.Process(worker.process.pid)
        baseline = main.memory_info().rss
        records = [make_record({"n": n, "blob": f"{n:06d}" * 10_000}, utc_now()) for n in range(640)]
        with engine.connect() as lock:
            lock.exec_driver_sql("LOCK TABLES messages WRITE")
            sent = enqueue(records)
            _queued_settles(client)
            peak = max(main.memory_info().rss for _ in range(10) if time.sleep(0.1) is None)
            prefetched = sent - client.llen("persist")
            lock.exec_driver_sql("UNLOCK TABLES")
        wait_until(lambda: stored() == (641, 641), timeout=60, what="every record stored once")
    finally:
        worker.stop()
        engine.dispose()
    held = CONCURRENCY * int(PREFETCH["WORKER_PREFETCH_BYTES"])
    bound = held * RSS_PER_PREFETCHED_BYTE + RSS_SLACK
    print(
        f"\nFAULT worker memory, messages table locked: {sent} task messages of ~{max_bytes // 1024} KiB"
        f" ({sent * max_bytes // MiB} MiB) sent, {prefetched} prefetched; main process RSS"
        f" {baseline / MiB:.0f} MiB -> {peak / MiB:.0f} MiB (+{(peak - baseline) / MiB:.0f} MiB,"
        f" bound +{bound / MiB:.0f} MiB = {held // MiB} MiB prefetch x {RSS_PER_PREFETCHED_BYTE} + slack)"
    )
    assert peak - baseline < bound
