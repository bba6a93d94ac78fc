"""The worker's metric families, and the backlog gauges its ``/metrics`` reads from Redis when scraped.

The families are written per pool process to ``PROMETHEUS_MULTIPROC_DIR``
and summed at scrape time (``relay/metrics.py``). The backlog gauges are
not: the pending set and the dead-letter list are one each per deployment,
so they are read (ZCARD, LLEN) by the process serving the scrape and never
stored per process, and several instances sharing one directory (only one
serves the port) do not add them up. Every replica reports the same value:
take ``max``, not ``sum``, across them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from prometheus_client import Counter, Histogram

from relay.broker.dead_letters import DeadLetters
from relay.broker.pending import Pending
from relay.metrics import GaugeCollector

PERSISTED = Counter("persisted_messages_total", "Messages stored by the worker (new rows).")
PERSIST_BATCH = Histogram(
    "persist_batch_records", "Records per persistence task.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
PERSIST_RETRIES = Counter("persist_retries_total", "Failed database writes that were retried.")
DEAD_LETTERS = Counter("dead_letters_total", "Messages moved to the dead-letter list.")
REQUEUED = Counter("requeued_lost_total", "Records re-queued by the reconciler after being lost in flight.")
EXPIRED_REMOVED = Counter("expired_messages_removed_total", "Messages removed by retention (RETENTION_DAYS).")
# From tens of milliseconds (the usual) to a minute (a backlog, a database outage waited out).
STORED_LATENCY = Histogram(
    "message_stored_latency_seconds",
    "Seconds from a message's acceptance (received_at) to its row being committed, per new row.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def observe_stored(rows: Sequence[Mapping[str, Any]]) -> None:
    """Observe each new row's ``persisted_at - received_at`` (``storage.save_messages``'s ``on_stored``).

    Both times are naive UTC, stamped by the ingestion API and the worker:
    a skew between their clocks shifts every value (clamped at 0).
    """
    for row in rows:
        STORED_LATENCY.observe(max(0.0, (row["persisted_at"] - row["received_at"]).total_seconds()))


def _read(count: Callable[[], int]) -> Callable[[], int | None]:
    def read() -> int | None:
        try:
            return count()
        except (redis.RedisError, OSError):  # Redis away: absent from this scrape, not a stale value
            return None

    return read


def backlog_gauges(pending: Pending, dead_letters: DeadLetters) -> list[GaugeCollector]:
    """The pending-record and dead-letter gauges, read from Redis at each scrape."""
    return [
        GaugeCollector("pending_records", "Accepted records not yet stored or dead-lettered.", _read(pending.count)),
        GaugeCollector(
            "dead_letter_records", "Records in the dead-letter list, waiting to be replayed.", _read(dead_letters.count)
        ),
    ]
