"""The persistence queue's contract: what the ingestion API writes and the worker reads.

Both sides import these names; nothing else spells them. A task message is a
call of :data:`PERSIST_TASK` with one argument, a list of records
(``relay.records``: ``{"id", "received_at", "payload"}``), in Celery's
documented task message protocol v2 as the Redis transport stores it
(https://docs.celeryq.dev/en/stable/internals/protocol.html), without the
base64 body encoding. The ingestion API writes it directly (see
:mod:`relay.broker.producer` for why not ``apply_async``); the end-to-end
tests run a real Celery worker on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import orjson

PERSIST_TASK = "tasks.persist_messages"
# Records per task message, in bytes, unless the caller says (PERSIST_MESSAGE_MAX_BYTES).
DEFAULT_MESSAGE_MAX_BYTES = 65_536
KOMBU_UNACKED_KEY = "unacked"  # kombu's Redis transport default (unacked_key)


# Every Redis key the persistence path uses besides the queue, the live stream and the dead-letter list
# (whose names are settings: PERSIST_QUEUE, LIVE_STREAM_KEY, DEAD_LETTER_KEY), derived from those names.


def pending_keys(queue: str) -> tuple[str, str]:
    """The pending set's keys for ``queue``: the sorted set of ids by time, and the hash of records."""
    return f"{queue}:pending", f"{queue}:pending:records"


def reconcile_lock_key(queue: str) -> str:
    """Held by the one worker re-queueing lost records at a time."""
    return f"{queue}:pending:reconciling"


def retention_lock_key(queue: str) -> str:
    """Held by the one worker removing expired messages at a time."""
    return f"{queue}:retention"


def fence_key(queue: str, write_id: str) -> str:
    """The fence of one queue write (see relay.broker.producer)."""
    return f"{queue}:fence:{write_id}"


def unused_key(queue: str) -> str:
    """Passed to the write script in place of an idempotency key when the request has none."""
    return f"{queue}:no-idempotency"


def idempotency_key(client: str | None, endpoint: str, key: str) -> str:
    """Where an Idempotency-Key's fingerprint and answer live, scoped to its client and endpoint."""
    return f"idempotency:{client or 'anonymous'}:{endpoint}:{key}"


def dead_letter_index_key(dead_letter_key: str) -> str:
    """The hash of message ids already dead-lettered (at most one entry each)."""
    return f"{dead_letter_key}:ids"


def task_message(records: Sequence[dict[str, str]], queue: str, task_id: str | None = None) -> bytes:
    """Encode a ``tasks.persist_messages(records)`` call as a Redis-transport task message."""
    task_id = task_id or str(uuid.uuid4())
    body = orjson.dumps([[list(records)], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    first = records[0]["id"] if records else ""
    envelope = {
        "body": body.decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": PERSIST_TASK,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "timelimit": [None, None],
            "argsrepr": f"[{len(records)} message(s) from {first}]",
            "kwargsrepr": "{}",
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "delivery_tag": task_id,
        },
    }
    return orjson.dumps(envelope)


def task_messages(
    records: Sequence[dict[str, str]], queue: str, max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
) -> list[bytes]:
    """Encode ``records`` as task messages of at most ``max_bytes`` of records each (at least one record).

    A single record's message takes its id as task id, so tools that show
    task ids show the message id.
    """
    groups: list[list[dict[str, str]]] = [[]]
    size = 0
    for record in records:
        weight = len(record["payload"]) + len(record["id"]) + len(record["received_at"])
        if groups[-1] and size + weight > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(record)
        size += weight
    return [task_message(group, queue, group[0]["id"] if len(group) == 1 else None) for group in groups if group]
