"""The sender's linger: the records of many writes leave in one task message."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import pytest
import redis
from flask import Flask

from relay.broker.linger import Linger
from relay.records import make_record, utc_now
from tests.helpers import take_tasks, wait_until


def records(count: int) -> list[dict[str, str]]:
    return [make_record({"i": i}, utc_now()) for i in range(count)]


def test_records_arriving_within_the_linger_leave_in_one_send_in_order() -> None:
    sent: list[list[str]] = []
    linger = Linger(lambda batch: sent.append([r["id"] for r in batch]), seconds=0.1)
    first, second, third = records(2), records(1), records(3)
    for part in (first, second, third):
        linger(part)
    assert sent == [], "nothing leaves before the linger is over"
    wait_until(lambda: sent, timeout=5, what="the send")
    assert sent == [[r["id"] for r in first + second + third]]
    later = records(1)
    linger(later)
    wait_until(lambda: len(sent) == 2, timeout=5, what="the next send")
    assert sent[1] == [later[0]["id"]]


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

    linger = Linger(send, seconds=0.02)
    linger(records(2))
    wait_until(lambda: calls == [2], timeout=5, what="the failing send")
    linger(records(1))
    wait_until(lambda: calls == [2, 1], timeout=5, what="the next send")
    assert "they are pending and will be sent again" in caplog.text


def test_flush_sends_what_waits_at_once() -> None:
    sent: list[int] = []
    done = threading.Event()
    linger = Linger(lambda batch: (sent.append(len(batch)), done.set()), seconds=60)
    linger(records(4))
    linger.flush()  # as at exit
    assert done.wait(1) and sent == [4]


def test_an_api_process_sends_one_task_message_for_requests_within_its_linger(
    make_ingestion_app: Callable[..., Flask], redis_url: str
) -> None:
    client = make_ingestion_app(ingest_send_linger_seconds=2.0).test_client()
    ids = [client.post("/dummy", json={"n": i}).get_json()["id"] for i in range(5)]
    assert take_tasks(redis_url) == [], "the answers came before the send (the records are pending meanwhile)"
    assert redis.Redis.from_url(redis_url).zcard("persist:pending") == 5
    tasks: list[list[dict]] = []
    wait_until(lambda: tasks.extend(take_tasks(redis_url)) or sum(map(len, tasks)) == 5, timeout=10, what="sent")
    assert [r["id"] for task in tasks for r in task] == ids
    assert len(tasks) == 1, "the five requests left in one task message"
