"""The worker's own metrics: POST -> stored latency per new row, and the backlog gauges read from Redis."""

from __future__ import annotations

import datetime as dt

import redis
from flask import Flask
from prometheus_client import CollectorRegistry

from relay import storage
from relay.broker.dead_letters import DeadLetters
from relay.broker.pending import Pending
from relay.records import make_record, utc_now
from relay.worker.metrics import STORED_LATENCY, backlog_gauges, observe_stored
from tests.helpers import place


def latency_count_and_sum() -> tuple[float, float]:
    samples = {s.name: s.value for metric in STORED_LATENCY.collect() for s in metric.samples}
    return samples["message_stored_latency_seconds_count"], samples["message_stored_latency_seconds_sum"]


def test_stored_latency_is_observed_once_per_new_row_from_received_at_to_commit(db_app: Flask) -> None:
    """A redelivered record (already stored) adds no observation: its latency was counted the first time."""
    now = utc_now()
    records = place([make_record({"n": i}, now - dt.timedelta(seconds=2)) for i in range(3)])
    count, total = latency_count_and_sum()
    with db_app.app_context():
        assert storage.save_messages(records, on_stored=observe_stored) == 3
        assert storage.save_messages(records, on_stored=observe_stored) == 0
    new_count, new_total = latency_count_and_sum()
    assert new_count - count == 3
    assert 3 * 2 <= new_total - total < 3 * 30


def test_stored_latency_buckets_span_tens_of_milliseconds_to_tens_of_seconds() -> None:
    bounds = [float(s.labels["le"]) for m in STORED_LATENCY.collect() for s in m.samples if s.name.endswith("_bucket")]
    assert bounds[0] <= 0.01 and bounds[-2] >= 30 and bounds[-1] == float("inf")


def test_a_clock_behind_the_ingestion_apis_clamps_latency_at_zero() -> None:
    count, total = latency_count_and_sum()
    now = utc_now()
    observe_stored([{"received_at": now + dt.timedelta(seconds=1), "persisted_at": now}])
    assert latency_count_and_sum() == (count + 1, total)


def test_backlog_gauges_read_the_pending_set_and_dead_letters_at_scrape_time(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    sent: list = []
    pending = Pending(client, "persist", sent.append)
    dead_letters = DeadLetters(client, "dead_letters")
    registry = CollectorRegistry()
    for gauge in backlog_gauges(pending, dead_letters):
        registry.register(gauge)
    assert registry.get_sample_value("pending_records") == 0
    assert registry.get_sample_value("dead_letter_records") == 0
    records = place([make_record({"n": i}, utc_now()) for i in range(4)])
    pipe = client.pipeline()
    pending.add(pipe, records)
    pipe.execute()
    dead_letters.add(records[0], "rejected")
    assert registry.get_sample_value("pending_records") == 4
    assert registry.get_sample_value("dead_letter_records") == 1
    pending.done([r["id"] for r in records])
    assert registry.get_sample_value("pending_records") == 0


def test_backlog_gauges_are_absent_while_redis_does_not_answer() -> None:
    """A scrape during a Redis outage shows no value rather than a stale one, and does not fail."""
    client = redis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    pending = Pending(client, "persist", lambda records: None)
    registry = CollectorRegistry()
    for gauge in backlog_gauges(pending, DeadLetters(client, "dead_letters")):
        registry.register(gauge)
    assert registry.get_sample_value("pending_records") is None
    assert registry.get_sample_value("dead_letter_records") is None
