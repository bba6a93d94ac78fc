"""The persistence queue's contract: what the ingestion API sends and the worker runs.

Both sides import these names; nothing else spells them:

* :data:`PERSIST_TASK`, the Celery task that stores records, called with one
  argument, a list of records (``relay.records``: ``{"id", "channel",
  "received_at", "payload", "offset", "position"}``, the last two given by
  the accept script, :mod:`relay.broker.positions`), on the queue named by
  ``PERSIST_QUEUE``;
* :func:`make_celery`, the Celery app both sides use (the worker adds the
  task to it), and :func:`send_records`, which sends records as task
  messages of at most ``PERSIST_MESSAGE_MAX_BYTES`` each through Celery's
  public ``send_task``;
* every Redis key of the persistence path beside the queue itself, the live
  stream and the dead-letter list (settings), derived from those names.

The task messages are Celery's own, so ``celery events``, Flower and
``celery inspect`` see every persistence task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from relay.settings import ENV_VARS, Settings

PERSIST_TASK = "tasks.persist_messages"
# Records per task message, in bytes, unless the caller says: PERSIST_MESSAGE_MAX_BYTES's default.
DEFAULT_MESSAGE_MAX_BYTES = int(ENV_VARS["PERSIST_MESSAGE_MAX_BYTES"].default)
# A queue record: its text fields, and the integers ``offset`` and ``position`` once accepted.
Record = dict[str, Any]


def make_celery(settings: Settings, *, timeout: float | None = None) -> Celery:
    """The Celery app of the persistence queue on ``REDIS_URL``.

    ``timeout`` bounds every broker operation of a producer, with no
    reconnection loop: the ingestion API and the worker's own sends use it
    (a Redis that stops answering must cost them at most that; the records
    stay pending). The worker's consumer leaves it unset, so it reconnects.
    """
    app = Celery("tasks", broker=settings.redis_url, set_as_current=False)
    transport: dict[str, object] = {"visibility_timeout": settings.celery_visibility_timeout}
    if timeout is not None:
        transport.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    app.conf.update(
        task_default_queue=settings.persist_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        # No task events (received, started, succeeded) until a monitor asks: publishing them was ~40% of
        # a worker's consumer CPU (docs/performance.md). Flower enables them itself (its --enable_events,
        # every few seconds); for `celery events`: `celery -A tasks control enable_events`.
        worker_send_task_events=False,
        # A durable (so not auto-delete) remote-control queue. With the auto-delete default, closing its
        # channel fails while Redis is down and kombu then leaves the task channel open; Celery 5.7's
        # second close of the lost connection (celery#10242) crashed the worker on it ("'NoneType' object
        # has no attribute 'hostname'"). kombu sweeps the bindings of expired control queues
        # (control_queue_expires). docs/operations.md, "Celery version".
        control_queue_durable=True,
        control_queue_exclusive=False,  # Celery refuses a durable exclusive queue; 5.7 defaults to exclusive
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        **({"broker_connection_timeout": timeout, "broker_connection_retry": False} if timeout is not None else {}),
    )
    return app


def warm_sender(app: Celery) -> None:
    """Build Celery's task-sending machinery now, without contacting Redis.

    Celery builds it on the first ``send_task`` of a process (``app.amqp.send_task_message``,
    ~95 ms here): without this, the first message each API process accepts after a start waits
    that long before it leaves, and the messages behind it wait too.
    """
    app.amqp.send_task_message  # noqa: B018 (a cached property: reading it builds it)


def queue_depth(app: Celery, queue: str) -> int:
    """Task messages waiting on ``queue``, as the broker reports it (a passive declare); 0 before it exists."""
    with app.connection_for_read() as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # never declared: no worker has consumed it yet, and nothing was sent
            return 0


def split_records(records: Sequence[Record], max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES) -> list[list[Record]]:
    """Group ``records``, in order, into task arguments of at most ``max_bytes`` of records (at least one each)."""
    groups: list[list[Record]] = [[]]
    size = 0
    for record in records:
        weight = len(record["payload"]) + len(record["id"]) + len(record["received_at"])
        if groups[-1] and size + weight > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(record)
        size += weight
    return [group for group in groups if group]


def send_records(
    app: Celery, queue: str, records: Sequence[Record], max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
) -> list[str]:
    """Send ``records`` as :data:`PERSIST_TASK` task messages; return their task ids.

    Never retries (``retry=False``): a failure raises at once, and the
    records' pending entries (relay.broker.pending) get them sent again. A
    single record's task takes its id as task id, so Flower shows the
    message id; ``argsrepr`` keeps tools' listings short whatever the size.
    """
    sent = []
    for group in split_records(records, max_bytes):
        first = group[0]["id"]
        result = app.send_task(
            PERSIST_TASK,
            args=[group],
            queue=queue,
            task_id=first if len(group) == 1 else None,
            retry=False,
            ignore_result=True,
            argsrepr=f"[{len(group)} message(s) from {first}]",
        )
        sent.append(result.id)
    return sent


# Every Redis key the persistence path uses besides the queue, the live stream and the dead-letter list
# (whose names are settings: PERSIST_QUEUE, LIVE_STREAM_KEY, DEAD_LETTER_KEY), derived from those names.


def pending_keys(queue: str) -> tuple[str, str]:
    """The pending set's keys for ``queue``: the sorted set of ids by time, and the hash of records."""
    return f"{queue}:pending", f"{queue}:pending:records"


def pending_positions_key(queue: str) -> str:
    """The pending records' ids scored by their position: its lowest score is where listings stop."""
    return f"{queue}:pending:positions"


def positions_key(queue: str) -> str:
    """The hash of position counters: ``*``, the last global position; each channel, its last offset."""
    return f"{queue}:positions"


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
