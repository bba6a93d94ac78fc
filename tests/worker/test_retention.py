"""Retention (``RETENTION_DAYS``): old messages are removed in bounded batches, new ones kept.

On real SQLite and MariaDB, through the list API and with a real Celery
worker sweeping on its own schedule while messages keep arriving.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from prometheus_client import CollectorRegistry, multiprocess

from relay import storage
from relay.broker.positions import Positions
from relay.records import make_record, utc_now
from tests.helpers import place, wait_until
from tests.stack import running_stack


def store(count: int, start: int = 0) -> list[str]:
    """Store ``count`` messages in one transaction (inside an app context); return their ids."""
    batch = place([make_record({"n": start + i}, utc_now()) for i in range(count)])
    storage.save_messages(batch)
    return [r["id"] for r in batch]


def stored_ids() -> list[str]:
    rows, _ = storage.list_messages(None, 10_000)
    return [row.id for row in rows]


def old_then_new(old: int, new: int) -> tuple[list[str], dt.datetime, list[str]]:
    """Store ``old`` messages, take a cutoff after them, then store ``new`` ones."""
    old_ids = store(old)
    time.sleep(0.01)
    cutoff = utc_now()
    time.sleep(0.01)
    return old_ids, cutoff, store(new, start=old)


def test_remove_expired_removes_only_older_rows_a_bounded_batch_at_a_time(db_app: Flask) -> None:
    with db_app.app_context():
        _, cutoff, new_ids = old_then_new(25, 10)
        assert [storage.remove_expired(cutoff, 10) for _ in range(4)] == [10, 10, 5, 0]
        assert stored_ids() == new_ids


def test_remove_expired_takes_the_removed_messages_off_their_channels_counts(db_app: Flask) -> None:
    def counts() -> dict[str, int]:
        return {c.name: c.messages for c in storage.list_channels(None, 100)[0]}

    with db_app.app_context():
        storage.save_messages(place([make_record({"n": i}, utc_now(), channel="ab"[i % 2]) for i in range(7)]))
        time.sleep(0.01)
        cutoff = utc_now()
        time.sleep(0.01)
        storage.save_messages(place([make_record({}, utc_now(), channel="c")]))
        assert counts() == {"a": 4, "b": 3, "c": 1}
        assert storage.remove_expired(cutoff, 3) == 3
        assert counts() == {"a": 2, "b": 2, "c": 1}
        assert storage.remove_expired(cutoff, 100) == 4
        assert counts() == {"a": 0, "b": 0, "c": 1}  # emptied channels stay listed, with 0
        assert [m.channel for m in storage.list_messages(None, 10)[0]] == ["c"]


def test_a_row_stored_late_holds_the_later_positions_back_until_it_is_old_enough(db_app: Flask) -> None:
    """Positions are given at acceptance, rows stored moments later: a row whose save came late (after the
    cutoff) keeps the old rows after it, so what is left stays a contiguous tail of the listing."""
    first, late, after = (place([make_record({"n": i}, utc_now())]) for i in range(3))
    with db_app.app_context():
        storage.save_messages(first + after)
        time.sleep(0.01)
        cutoff = utc_now()
        time.sleep(0.01)
        storage.save_messages(late)
        assert storage.remove_expired(cutoff, 100) == 1
        assert stored_ids() == [late[0]["id"], after[0]["id"]]
        assert storage.remove_expired(utc_now(), 100) == 2


def test_remove_expired_stops_at_the_first_row_not_older_than_the_cutoff(db_app: Flask) -> None:
    """Removal is a prefix of the listing: what is left is always a contiguous tail."""
    with db_app.app_context():
        old_ids, cutoff, new_ids = old_then_new(5, 5)
        assert storage.remove_expired(cutoff, 3) == 3
        assert stored_ids() == old_ids[3:] + new_ids
        assert storage.remove_expired(cutoff, 1000) == 2
        assert storage.remove_expired(dt.datetime(2000, 1, 1), 1000) == 0
        assert stored_ids() == new_ids


def test_cursor_into_removed_rows_continues_at_the_next_existing_message(
    make_list_app: Callable[..., Flask], redis_url: str
) -> None:
    app = make_list_app()
    client = app.test_client()
    with app.app_context():
        old_ids, cutoff, new_ids = old_then_new(6, 4)
        # Every position stored, none pending: the watermark is past them all, as a worker's seeding leaves it.
        Positions(redis.Redis.from_url(redis_url), "persist").seed(*storage.position_floors())
    first = client.get("/messages?limit=2").get_json()
    assert [m["id"] for m in first["data"]] == old_ids[:2]
    with app.app_context():
        assert storage.remove_expired(cutoff, 1000) == 6
    page = client.get(f"/messages?limit=2&cursor={first['next_cursor']}").get_json()
    assert [m["id"] for m in page["data"]] == new_ids[:2]
    rest = client.get(f"/messages?limit=10&cursor={page['next_cursor']}").get_json()
    assert [m["id"] for m in rest["data"]] == new_ids[2:] and rest["has_more"] is False
    newest_first = client.get("/messages?order=desc&limit=3").get_json()
    tail = client.get(f"/messages?order=desc&cursor={newest_first['next_cursor']}").get_json()
    assert [m["id"] for m in tail["data"]] == new_ids[:1] and tail["has_more"] is False


def test_retention_sweep_does_nothing_while_another_instance_holds_the_lock(db_app: Flask, redis_url: str) -> None:
    from relay.worker import tasks  # the worker module: its settings come from this environment (RETENTION_DAYS unset)

    client = redis.Redis.from_url(redis_url)
    with db_app.app_context():
        ids = store(5)
    time.sleep(0.01)
    held = client.lock(f"{tasks.settings.persist_queue}:retention", timeout=30)
    assert held.acquire(blocking=False)
    assert tasks.remove_expired_messages(db_app, client) == 0
    held.release()
    assert tasks.remove_expired_messages(db_app, client) == 5
    with db_app.app_context():
        assert not set(ids) & set(stored_ids())


RETENTION_SECONDS = 3.0
BATCH = 40
SWEEP_LINE = re.compile(r"removed (\d+) expired message\(s\) in (\d+) batch\(es\)")


@pytest.mark.e2e
def test_worker_removes_expired_messages_in_batches_while_new_ones_keep_arriving(
    database_url: str, redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "worker-metrics"
    metrics_dir.mkdir()
    worker_env = {
        "RETENTION_DAYS": repr(RETENTION_SECONDS / 86400),
        "RETENTION_INTERVAL_SECONDS": "0.5",
        "RETENTION_BATCH_SIZE": str(BATCH),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with running_stack(database_url, redis_url, log_dir, worker_env=worker_env) as stack:
        old_ids: list[str] = []
        for start in range(0, 300, 100):
            batch = [{"old": start + i} for i in range(100)]
            response = requests.post(f"{stack.ingest_url}/dummy/batch", json=batch, timeout=10)
            assert response.status_code == 202, response.text
            old_ids += response.json()["ids"]
        wait_until(lambda: len(stack.listed()) == 300, timeout=30, what="the old messages stored")

        posted: list[tuple[float, str]] = []
        stop = threading.Event()

        def keep_posting() -> None:
            while not stop.is_set():
                posted.append((time.monotonic(), stack.post({"new": len(posted)})))
                time.sleep(0.02)

        poster = threading.Thread(target=keep_posting)
        poster.start()
        try:
            wait_until(
                lambda: not set(old_ids) & {m["id"] for m in stack.listed()},
                timeout=40,
                what="the old messages removed",
            )
            time.sleep(1.0)  # a few more sweeps with inserts flowing
        finally:
            stop.set()
            poster.join()
        stopped = time.monotonic()
        new_ids = [message_id for _, message_id in posted]
        recent = [message_id for at, message_id in posted if at > stopped - 1.5]
        wait_until(lambda: set(recent) <= {m["id"] for m in stack.listed()}, timeout=5, what="recent messages stored")
        listed = [m["id"] for m in stack.listed()]
    worker_log = stack.services["worker"].log()  # complete now that the worker has stopped

    assert listed, "every message was removed, the new ones too"
    assert set(listed) <= set(new_ids), "an old message is left"
    assert set(recent) <= set(listed)
    # What was removed is the oldest: two pool processes may commit neighbours out of order, nothing more.
    posted_at = dict((message_id, at) for at, message_id in posted)
    gone = [posted_at[i] for i in new_ids if i not in set(listed)]
    assert not gone or max(gone) <= min(posted_at[i] for i in listed) + 0.5
    first = len(gone)
    sweeps = [(int(n), int(b)) for n, b in SWEEP_LINE.findall(worker_log)]
    # A sweep goes on batch after batch (how the 300 fall into sweeps depends on when each was stored).
    assert max(b for _, b in sweeps) > 1 and sum(b for _, b in sweeps) >= 300 // BATCH, sweeps
    assert all(n <= b * BATCH for n, b in sweeps)
    removed = sum(n for n, _ in sweeps)
    assert removed >= 300 + first, (removed, first)  # the worker swept on after the listing
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    assert registry.get_sample_value("expired_messages_removed_total") == removed
