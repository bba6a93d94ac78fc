"""The persistence policy: retries, outage waits, poison isolation (plain functions, then real stores)."""

from __future__ import annotations

import datetime as dt
import logging
import random
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url

from relay import storage
from relay.broker.contract import make_celery, queue_depth
from relay.broker.dead_letters import DeadLetters
from relay.broker.positions import Positions
from relay.broker.producer import Producer
from relay.db_errors import about_the_record
from relay.records import make_record
from relay.settings import load_settings
from relay.worker.persistence import Persister
from tests.helpers import (
    POISON_TRIGGER,
    ROOT,
    clear_database,
    mariadb_user,
    persist_pending,
    place,
    python_env,
    take_tasks,
)


def records(count: int, poison: Sequence[int] = ()) -> list[dict]:
    """Records placed as the accept script places them (an offset and a position each)."""
    return place(
        [
            make_record({"n": i, "kind": "poison" if i in poison else "fine"}, dt.datetime(2026, 1, 1))
            for i in range(count)
        ]
    )


def accept(redis_url: str) -> Callable[[Sequence[dict]], object]:
    """Accept records as the ingestion API does (new offset and position, pending, sent): what a replay goes through."""
    client = redis.Redis.from_url(redis_url)
    return Producer(client, "persist", "messages:live", 100, 60, send=persist_pending(redis_url).send).write


def unplaced(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("offset", "position")}


class DiskFull(Exception):
    """What a database that answers but cannot write raises, as far as the policy knows."""


def rejected(exc: Exception) -> bool:
    """The stand-in classifier: a ValueError is the database rejecting a record, anything else is the database's."""
    return isinstance(exc, ValueError)


class Store:
    """A stand-in database for the policy tests: rejects poison, can be 'down', or up but unable to write ('full')."""

    def __init__(self, down_for: int = 0, full_for: int = 0) -> None:
        self.rows: dict[str, dict] = {}
        self.down_for = down_for
        self.full_for = full_for
        self.sleeps: list[float] = []

    def save(self, chunk: Sequence[dict]) -> int:
        if self.down_for > 0:
            raise ConnectionError("database is down")
        if self.full_for > 0:
            raise DiskFull("database or disk is full")
        if any('"poison"' in r["payload"] for r in chunk):
            raise ValueError("rejected by a constraint")
        new = [r for r in chunk if r["id"] not in self.rows]
        self.rows.update({r["id"]: r for r in new})
        return len(new)

    def up(self) -> bool:
        return self.down_for <= 0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.down_for -= 1
        self.full_for -= 1


def test_poison_records_are_isolated_and_the_rest_stored() -> None:
    store, dead = Store(), []
    persister = Persister(
        store.save,
        store.up,
        lambda r, e: dead.append((r, e)),
        about_the_record=rejected,
        chunk_size=64,
        sleep=store.sleep,
    )
    batch = records(100, poison=(3, 70))
    outcome = persister.persist(batch)
    assert outcome.stored == 98 and outcome.dead_lettered == 2
    assert [r["id"] for r, _ in dead] == [batch[3]["id"], batch[70]["id"]]
    assert all("rejected by a constraint" in error for _, error in dead)
    assert set(store.rows) == {r["id"] for i, r in enumerate(batch) if i not in (3, 70)}


def test_an_outage_is_waited_out_and_nothing_is_dead_lettered() -> None:
    store, dead = Store(down_for=40), []
    persister = Persister(
        store.save, store.up, lambda r, e: dead.append(r), about_the_record=rejected, max_backoff=2.0, sleep=store.sleep
    )
    outcome = persister.persist(records(10))
    assert outcome.stored == 10 and not dead
    assert len(store.sleeps) == 40 and max(store.sleeps) == 2.0


def test_a_database_that_answers_but_cannot_write_is_waited_out_and_nothing_is_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 27: a full disk answers SELECT 1; 40 failed writes are an outage, never counted as poison attempts."""
    store, dead = Store(full_for=40), []
    persister = Persister(
        store.save, store.up, lambda r, e: dead.append(r), about_the_record=rejected, max_backoff=2.0, sleep=store.sleep
    )
    logger = logging.getLogger("relay.worker.persistence")
    # Alembic's logging setup, run by the migrations of an earlier test, disables the loggers that exist.
    disabled, logger.disabled = logger.disabled, False
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            outcome = persister.persist(records(10))
    finally:
        logger.disabled = disabled
    assert (outcome.stored, outcome.dead_lettered, dead) == (10, 0, [])
    assert len(store.sleeps) == 40 and max(store.sleeps) == 2.0, "the outage's backoff, capped"
    assert {r.levelname for r in caplog.records} == {"WARNING"}, "waiting is not an error"
    assert "database cannot write (DiskFull: database or disk is full)" in caplog.records[0].getMessage()


def test_poison_met_once_the_database_writes_again_is_still_dead_lettered() -> None:
    """A full disk first, then a batch with two rejected records: the wait, then the usual isolation."""
    store, dead = Store(full_for=5), []
    persister = Persister(
        store.save, store.up, lambda r, e: dead.append(r["id"]), about_the_record=rejected, sleep=store.sleep
    )
    batch = records(100, poison=(3, 70))
    outcome = persister.persist(batch)
    assert (outcome.stored, outcome.dead_lettered) == (98, 2)
    assert sorted(dead) == sorted([batch[3]["id"], batch[70]["id"]])
    assert store.sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 0.05, 0.1], "the outage, then two retries of the rejected chunk"


def isolate_with_a_fault(at_save: int, fault: str, lasting: int) -> list[float]:
    """Isolate 2 poison records among 64 while the database meets ``fault`` (a Store attribute) at save ``at_save``.

    Asserts that only the two rejected records are dead-lettered and the 62 others stored; returns the sleeps.
    """
    store, dead, saves = Store(), [], []

    def save(chunk: Sequence[dict]) -> int:
        saves.append(len(chunk))
        if len(saves) == at_save:
            setattr(store, fault, lasting)
        return store.save(chunk)

    persister = Persister(
        save, store.up, lambda r, e: dead.append(r["id"]), about_the_record=rejected, sleep=store.sleep
    )
    batch = records(64, poison=(5, 40))
    outcome = persister.persist(batch)
    assert sorted(dead) == sorted([batch[5]["id"], batch[40]["id"]]) and outcome.stored == 62
    return store.sleeps


def test_a_database_filling_up_during_isolation_dead_letters_only_the_rejected_records() -> None:
    """The disk fills halfway through isolating poison: the parts met meanwhile wait, they are not taken for poison."""
    assert isolate_with_a_fault(6, "full_for", 4) == [0.05, 0.1, 0.05, 0.1, 0.2, 0.4]


def test_an_error_the_classifier_cannot_place_is_not_poison() -> None:
    """A classifier that raises says nothing about the record: the write is retried as in an outage."""
    store, dead = Store(full_for=3), []

    def classify(exc: Exception) -> bool:
        raise LookupError("no idea")

    persister = Persister(
        store.save, store.up, lambda r, e: dead.append(r), about_the_record=classify, sleep=store.sleep
    )
    assert persister.persist(records(4)).stored == 4 and not dead and len(store.sleeps) == 3


def test_a_transient_failure_is_retried() -> None:
    calls = []

    def flaky_save(chunk: Sequence[dict]) -> int:
        calls.append(len(chunk))
        if len(calls) == 1:
            raise RuntimeError("deadlock found; try restarting transaction")
        return len(chunk)

    outcome = Persister(
        flaky_save, lambda: True, lambda r, e: None, about_the_record=rejected, sleep=lambda s: None
    ).persist(records(5))
    assert outcome.stored == 5 and outcome.retries == 1 and calls == [5, 5]


def test_isolating_poison_sleeps_only_before_it_starts() -> None:
    """300 rejected records of 1,000: the whole chunk's retries sleep, the bisection does not; each goes once."""
    store, dead = Store(), []
    poison = set(random.Random(14).sample(range(1000), 300))
    batch = records(1000, poison=poison)
    persister = Persister(
        store.save,
        store.up,
        lambda r, e: dead.append(r["id"]),
        about_the_record=rejected,
        attempts=3,
        sleep=store.sleep,
    )
    outcome = persister.persist(batch)
    assert store.sleeps == [0.05, 0.1], "only the first attempts of the whole chunk back off"
    assert (outcome.stored, outcome.dead_lettered, outcome.deferred) == (700, 300, [])
    assert sorted(dead) == sorted(batch[i]["id"] for i in poison)


def clocked_persister(store: Store, dead: list[str], now: list[float], **options: object) -> Persister:
    """A persister on ``store`` whose every write takes 10 ms of the fake clock ``now``; dead letters go to ``dead``."""

    def slow_save(chunk: Sequence[dict]) -> int:
        now[0] += 0.01
        return store.save(chunk)

    return Persister(
        slow_save,
        store.up,
        lambda r, e: dead.append(r["id"]),
        about_the_record=rejected,
        clock=lambda: now[0],
        **options,
    )


def test_isolation_past_its_budget_defers_the_rest_and_each_record_is_handled_once() -> None:
    """Each write takes 10 ms of a 1 s budget: every call makes progress, then hands back what is left."""
    store, dead, now = Store(), [], [0.0]
    persister = clocked_persister(store, dead, now, budget=1.0, sleep=store.sleep)
    poison = set(random.Random(3).sample(range(1000), 300))
    batch = records(1000, poison=poison)
    todo, calls = batch, 0
    while todo:
        calls += 1
        started = now[0]
        outcome = persister.persist(todo)
        assert now[0] - started < 1.1, "a call stays within its budget (plus one write)"
        handled = len(todo) - len(outcome.deferred)
        assert handled > 0, "every call makes progress"
        todo = outcome.deferred
    assert calls > 1
    assert sorted(dead) == sorted(batch[i]["id"] for i in poison)
    assert set(store.rows) == {r["id"] for i, r in enumerate(batch) if i not in poison}


def test_what_a_call_defers_is_exactly_what_it_left_unhandled() -> None:
    """Out of time in the first of three chunks: its untried parts and the two other chunks come back, nothing else."""
    store, dead, now = Store(), [], [0.0]
    persister = clocked_persister(store, dead, now, chunk_size=100, budget=0.1)
    batch = records(300, poison=range(0, 100, 7))
    outcome = persister.persist(batch)
    deferred = [r["id"] for r in outcome.deferred]
    assert len(deferred) > 200 and [r["id"] for r in batch[100:]] == deferred[-200:]
    handled = set(store.rows) | set(dead)
    assert len(handled) + len(deferred) == 300 and handled | set(deferred) == {r["id"] for r in batch}


def test_an_outage_during_isolation_is_waited_out() -> None:
    """The database goes away halfway through isolating: it is waited for, and no fine record is dead-lettered."""
    sleeps = isolate_with_a_fault(10, "down_for", 5)
    assert sleeps == [0.05, 0.1, 0.05, 0.1, 0.2, 0.4, 0.8], "two retries, then the outage's backoff"


def test_a_record_is_dead_lettered_once_however_often_it_is_rejected(redis_url: str) -> None:
    """A redelivered task message isolated again adds no second entry; after a replay it can come back."""
    client = redis.Redis.from_url(redis_url)
    dead_letters = DeadLetters(client, "dead_letters", accept(redis_url))
    record = records(1)[0]
    added = [dead_letters.add(record, "poison rejected") for _ in range(2)]
    assert dead_letters.count() == 1 and added == [True, False]
    with pytest.raises(RuntimeError):
        DeadLetters(client, "dead_letters").replay()  # the worker's: it dead-letters, it never replays
    assert dead_letters.count() == 1
    assert dead_letters.replay() == 1 and dead_letters.count() == 0
    assert client.zscore("persist:pending", record["id"]) is not None, "accepted again: pending"
    assert dead_letters.add(record, "rejected again") is True
    assert [e["error"] for e in dead_letters.entries()] == ["rejected again"]


def test_real_database_rejection_goes_to_the_dead_letter_list_and_replays(
    db_app: Flask, database_url: str, redis_url: str
) -> None:
    """A trigger makes the database reject some rows; they are dead-lettered, then replayed once fixed."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(POISON_TRIGGER[engine.dialect.name])
    client = redis.Redis.from_url(redis_url)
    dead_letters = DeadLetters(client, "dead_letters", accept(redis_url))
    batch = records(50, poison=(10, 11, 40))
    try:
        with db_app.app_context():
            persister = Persister(
                storage.save_messages,
                lambda: True,
                dead_letters.add,
                about_the_record=about_the_record,
                chunk_size=20,
                sleep=lambda s: None,
            )
            outcome = persister.persist(batch)
            assert (outcome.stored, outcome.dead_lettered) == (47, 3)
            assert storage.get_message(batch[10]["id"]) is None and storage.get_message(batch[9]["id"]) is not None
            # As a worker seeds the counters at start-up: replays are placed above every stored number.
            Positions(client, "persist").seed(*storage.position_floors())
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER reject_poison")
        engine.dispose()
    entries = dead_letters.entries()
    assert [e["record"]["id"] for e in entries] == [batch[i]["id"] for i in (10, 11, 40)]
    assert "poison rejected" in entries[0]["error"]

    env = python_env({"REDIS_URL": redis_url})
    listing = subprocess.run(
        [sys.executable, "scripts/dead_letters.py", "list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0 and batch[10]["id"] in listing.stdout and "3 dead letter(s)" in listing.stdout
    replay = subprocess.run(
        [sys.executable, "scripts/dead_letters.py", "replay", "--id", batch[11]["id"]],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert dead_letters.count() == 2
    [[replayed]] = take_tasks(client)  # the replayed record, as a task message of its own
    assert unplaced(replayed) == unplaced(batch[11]), "the same id, channel, received_at and payload"
    last = batch[-1]
    assert (replayed["offset"], replayed["position"]) == (last["offset"] + 1, last["position"] + 1), "placed anew"
    assert dead_letters.replay() == 2 and dead_letters.count() == 0
    again = [r for [r] in take_tasks(client)]
    assert {r["id"]: unplaced(r) for r in again} == {batch[i]["id"]: unplaced(batch[i]) for i in (10, 40)}
    assert sorted(r["position"] for r in again) == [last["position"] + 2, last["position"] + 3]
    assert client.zcard("persist:pending") == 3, "replayed records are pending until stored"
    assert client.zrange("persist:pending:positions", 0, -1, withscores=True) == sorted(
        ((r["id"].encode(), float(r["position"])) for r in [replayed, *again]), key=lambda pair: pair[1]
    ), "each pending at its new position: the watermark waits for it"


@pytest.mark.mysql
def test_a_mariadb_refusing_writes_is_waited_out_and_nothing_is_dead_lettered(mysql_url: str) -> None:
    """The worker's user may read but not write (error 1142, SELECT 1 answering): waited out until granted.

    A revoked privilege stands for every database that answers but will not
    write (``read_only``, a quota): per user, so the server other tests share
    is untouched. Table privileges apply to open connections at their next
    statement, so the grant ends the outage without a reconnect.
    """
    clear_database(mysql_url)
    batch, dead, sleeps = records(30), [], []
    with mariadb_user(mysql_url, "SELECT") as url:
        user, database = make_url(url).username, make_url(mysql_url).database
        admin = sa.create_engine(mysql_url)

        def grant_writes() -> None:
            with admin.begin() as conn:
                for table in ("messages", "channel_deltas"):
                    conn.exec_driver_sql(f"GRANT INSERT, UPDATE ON `{database}`.`{table}` TO '{user}'@'%%'")

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 4:
                grant_writes()

        def up() -> bool:
            storage.db.session.execute(sa.text("SELECT 1"))
            return True

        app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
        with app.app_context():
            persister = Persister(
                storage.save_messages,
                up,
                lambda r, e: dead.append((r["id"], e)),
                about_the_record=about_the_record,
                chunk_size=10,
                sleep=sleep,
            )
            try:
                outcome = persister.persist(batch)
            finally:
                storage.db.session.remove()
                storage.db.engine.dispose()
                admin.dispose()
    assert len(sleeps) >= 4 and not dead, "waited while writes were refused, never dead-lettered for it"
    assert (outcome.stored, outcome.dead_lettered) == (30, 0)


@pytest.mark.parametrize("argv", [["--help"], ["replay"]])
def test_dead_letters_script_usage(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "scripts/dead_letters.py", *argv], cwd=ROOT, capture_output=True)
    assert result.returncode == (0 if argv == ["--help"] else 2)


def test_records_no_task_message_carries_are_sent_again_once_the_queue_is_empty(redis_url: str) -> None:
    """The kill between kombu's pop and its bookkeeping, reproduced: the task message is gone, its records pending."""
    client = redis.Redis.from_url(redis_url)
    pending = persist_pending(redis_url)
    celery = make_celery(load_settings(redis_url=redis_url))
    producer = Producer(client, "persist", "messages:live", 100, 60, send=pending.send)
    lost, handled, waiting = records(3), records(2), records(1)
    producer.write(lost)
    producer.write(handled)
    assert pending.count() == 5
    pending.done([r["id"] for r in handled])
    assert len(take_tasks(client)) == 2  # both popped; the worker holding `lost` died before recording it
    producer.write(waiting)

    def depth() -> int:
        return queue_depth(celery, "persist")

    assert pending.reconcile(grace=0, queue_depth=depth) == 0, "nothing is sent while a task message waits"
    assert take_tasks(client) == [waiting]
    pending.done([r["id"] for r in waiting])
    assert pending.reconcile(grace=3600, queue_depth=depth) == 0, "nor before the grace period"
    client.delete("persist:pending:reconciling")
    assert pending.reconcile(grace=0, queue_depth=depth) == 3
    [sent] = take_tasks(client)
    assert sorted(r["id"] for r in sent) == sorted(r["id"] for r in lost)
    assert pending.count() == 3, "still pending until a worker handles them"
    client.delete("persist:pending:reconciling")
    assert pending.reconcile(grace=5, queue_depth=depth) == 0, "sent again just now: a whole grace period first"


def test_records_a_worker_keeps_fresh_are_not_taken_for_lost(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pending = persist_pending(redis_url)
    working = records(2)  # placed: the pending set keeps each one's position
    pipe = client.pipeline()
    pending.add(pipe, working)
    pipe.execute()
    client.zadd("persist:pending", dict.fromkeys([r["id"] for r in working], 1.0))  # accepted long ago
    pending.touch([working[0]["id"]])
    assert pending.reconcile(grace=60, queue_depth=lambda: 0) == 1
    [sent] = take_tasks(client)
    assert [r["id"] for r in sent] == [working[1]["id"]]
    pending.touch(["never-pending"])
    assert client.zscore("persist:pending", "never-pending") is None, "touch adds nothing"
