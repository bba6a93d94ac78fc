"""The sender that follows the load: at once when nothing is in flight, gathered while something is."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import pytest
import redis
from flask import Flask

from relay.broker.sender import GatheringSender
from relay.records import make_record, utc_now
from tests.helpers import take_tasks, wait_until


def records(count: int, size: int = 10) -> list[dict[str, str]]:
    return [make_record({"i": i, "pad": "x" * size}, utc_now()) for i in range(count)]


def ids(batch: Sequence[dict[str, str]]) -> list[str]:
    return [r["id"] for r in batch]


class Recorder:
    """A send that records each call's ids and can be held (a send in flight)."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, batch: Sequence[dict[str, str]]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.sent.append(ids(batch))


def test_with_nothing_in_flight_records_leave_at_once() -> None:
    send = Recorder()
    sender = GatheringSender(send, gather_seconds=60)
    first = records(1)
    sender(first, in_flight=0)
    wait_until(lambda: send.sent, timeout=5, what="the send")
    assert send.sent == [ids(first)], "a lone record must not wait for the gather bound"


def test_while_others_are_in_flight_records_gather_until_the_time_bound_in_order() -> None:
    send = Recorder()
    sender = GatheringSender(send, gather_seconds=0.3, per_record_seconds=1.0)  # 5 in flight: the bound
    first, second, third = records(2), records(1), records(3)
    for part in (first, second, third):
        sender(part, in_flight=5)
    threading.Event().wait(0.1)
    assert send.sent == [], "nothing leaves before the bound while others are in flight"
    wait_until(lambda: send.sent, timeout=5, what="the send at the bound")
    assert send.sent == [ids(first + second + third)]


def test_the_wait_grows_with_the_records_in_flight() -> None:
    quick, slow = Recorder(), Recorder()
    behind_one = GatheringSender(quick, gather_seconds=60, per_record_seconds=0.05)
    behind_many = GatheringSender(slow, gather_seconds=60, per_record_seconds=0.05)
    started = time.monotonic()
    behind_one(records(1), in_flight=1)  # due after 0.05 s
    behind_many(records(1), in_flight=40)  # due after 2 s
    wait_until(lambda: quick.sent, timeout=5, what="the send behind one record")
    assert not slow.sent, "behind 40 records in flight the wait is longer"
    wait_until(lambda: slow.sent, timeout=10, what="the send behind many")
    assert time.monotonic() - started >= 2.0


def test_the_gather_ends_as_soon_as_one_task_message_is_full() -> None:
    send = Recorder()
    sender = GatheringSender(send, gather_seconds=60, max_bytes=1000, per_record_seconds=60)
    full = records(4, size=300)  # over 1,000 bytes of payload together
    sender(full[:2], in_flight=3)
    threading.Event().wait(0.1)
    assert send.sent == []
    sender(full[2:], in_flight=3)
    wait_until(lambda: send.sent, timeout=5, what="the send of a full message")
    assert send.sent == [ids(full)]


def test_records_arriving_during_a_send_leave_together_in_the_next() -> None:
    send = Recorder()
    sender = GatheringSender(send, gather_seconds=0.05)
    send.release.clear()
    first = records(1)
    sender(first, in_flight=0)
    assert send.entered.wait(5)
    later = [records(1) for _ in range(4)]
    for part in later:
        sender(part, in_flight=1)
    send.release.set()
    wait_until(lambda: len(send.sent) == 2, timeout=5, what="the second send")
    assert send.sent == [ids(first), [i for part in later for i in ids(part)]]


def test_a_failed_send_is_logged_and_the_sender_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Alembic's fileConfig (the migrations other tests run) disables loggers that existed before it.
    monkeypatch.setattr(logging.getLogger("relay.broker.pending"), "disabled", False)
    calls: list[int] = []

    def send(batch: Sequence[dict[str, str]]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("Redis went away")

    sender = GatheringSender(send, gather_seconds=0.02)
    sender(records(2))
    wait_until(lambda: calls == [2], timeout=5, what="the failing send")
    sender(records(1))
    wait_until(lambda: calls == [2, 1], timeout=5, what="the next send")
    assert "they are pending and will be sent again" in caplog.text


def test_flush_sends_what_waits_at_once() -> None:
    sent: list[int] = []
    sender = GatheringSender(lambda batch: sent.append(len(batch)), gather_seconds=60, per_record_seconds=60)
    sender(records(4), in_flight=10)  # due in 60 s: only the flush can send it now
    sender.flush()  # as at exit
    assert sent == [4], "flush sends before it returns"


def test_an_api_process_sends_a_lone_batch_at_once_and_gathers_behind_a_backlog(
    make_ingestion_app: Callable[..., Flask], redis_url: str
) -> None:
    """No worker here: the first batch stays pending, a backlog the requests after it find in flight."""
    client = make_ingestion_app(ingest_send_gather_seconds=1.0).test_client()
    backlog = client.post("/dummy/batch", json=[{"n": i} for i in range(500)]).get_json()["ids"]
    tasks: list[list[dict]] = []
    wait_until(lambda: tasks.extend(take_tasks(redis_url)) or tasks, timeout=5, what="the batch's task")
    assert [r["id"] for task in tasks for r in task] == backlog, "sent at once: nothing else was in flight"
    later = [client.post("/dummy", json={"n": i}).get_json()["id"] for i in range(5)]
    assert take_tasks(redis_url) == [], "gathering behind 500 records in flight: the whole bound (1 s)"
    assert redis.Redis.from_url(redis_url).zcard("persist:pending") == 505
    gathered: list[list[dict]] = []
    wait_until(lambda: gathered.extend(take_tasks(redis_url)) or gathered, timeout=10, what="the gathered send")
    assert [[r["id"] for r in task] for task in gathered] == [later], "the five left in one task message, in order"
