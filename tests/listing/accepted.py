"""Messages for the list API's tests, accepted as the ingestion API accepts them, then stored as a worker stores them.

Through a real :class:`relay.broker.producer.Producer` on the Redis the list
app reads its watermark from, so each record's offset and position come from
the real accept script, and it stays pending (below the watermark's reach)
until :func:`settle` stores it and marks it done, as a worker would. No task
message is sent: no worker runs in these tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask

from relay import storage
from relay.broker.producer import Producer


def producer(app: Flask) -> Producer:
    """A producer on the Redis and queue of the list ``app`` (its pending set), sending no task messages."""
    pending = app.extensions["pending"]
    return Producer(pending.client, pending.queue, "messages:live", 1000, 60)


def accept(app: Flask, records: Sequence[dict]) -> list[str]:
    """Accept ``records`` in one write (each gets its offset and position); return their ids. They stay pending."""
    producer(app).write(records)
    return [record["id"] for record in records]


def settle(app: Flask, records: Sequence[dict]) -> None:
    """Store accepted ``records`` and take them off the pending set, as a worker does (commit first)."""
    with app.app_context():
        storage.save_messages(records)
    app.extensions["pending"].done([record["id"] for record in records])


def store(app: Flask, records: Sequence[dict]) -> list[str]:
    """Accept ``records``, then store them; return their ids."""
    ids = accept(app, records)
    settle(app, records)
    return ids
