"""The Celery worker that persists messages.

Run it with ``celery -A tasks worker -Q persist`` (the queue name comes from
``PERSIST_QUEUE``). Reads ``REDIS_URL``, ``SQLALCHEMY_DATABASE_URI``,
``PERSIST_QUEUE``, ``CELERY_VISIBILITY_TIMEOUT``, ``PERSIST_BATCH_SIZE``,
``PERSIST_MESSAGE_MAX_BYTES``, ``WORKER_PREFETCH_BYTES``,
``PERSIST_FLUSH_SECONDS``, ``PERSIST_ATTEMPTS``, ``DEAD_LETTER_KEY``,
``RETENTION_DAYS``, ``RETENTION_INTERVAL_SECONDS``, ``RETENTION_BATCH_SIZE``,
``WORKER_METRICS_PORT``, ``BIND_HOST`` and ``PROMETHEUS_MULTIPROC_DIR`` through
``relay/settings.py``. The metrics port also answers ``GET /healthz``: 200 while the
consumer runs and Redis answers, else 503 (starting, shutting down, no Redis).

Every task message carries a list of plain-JSON records (one for a single
POST, up to 1,000 for a batch POST). The task is a celery-batches ``Batches``
task: the worker buffers incoming task messages and flushes them together,
when ``PERSIST_BATCH_SIZE`` have arrived or ``PERSIST_FLUSH_SECONDS`` have
passed, so one transaction stores many single-message POSTs (a transaction
per message caps a worker at ~600 rows/s on MariaDB; batches reach tens of
thousands). The logic lives in ``persistence.Persister`` and
``storage.save_messages`` (idempotent: a redelivered message is stored once).

Reliability, and why:

* messages are acknowledged only after their batch returns (``acks_late``);
  the batch function returns only once every record is stored or
  dead-lettered, and if it cannot do either it kills its own process so
  nothing is acknowledged;
* unacknowledged messages of a dead worker (or pool process) are redelivered
  after ``CELERY_VISIBILITY_TIMEOUT`` seconds;
* database outages are waited out with backoff; records the database keeps
  rejecting go to the dead-letter list (``scripts/dead_letters.py``), once
  each even if their task message is delivered twice;
* a batch's handling (outages aside) is bounded by a quarter of the
  visibility timeout: past it, the records not yet handled are queued again
  as new task messages and the batch returns, so isolating poison records
  never outlives the visibility timeout (which would redeliver the batch
  and handle it twice) nor holds up other messages for long;
* memory is bounded in bytes: each pool process prefetches at most
  ``WORKER_PREFETCH_BYTES // PERSIST_MESSAGE_MAX_BYTES`` task messages, and
  no task message carries more than ``PERSIST_MESSAGE_MAX_BYTES`` of
  records, so the main process holds at most concurrency x
  ``WORKER_PREFETCH_BYTES`` of them (16 MiB per pool process by default),
  which costs ~4x that in RSS once decoded: ~64 MiB per pool process
  (measured, see docs/operations.md). celery-batches still flushes every
  ``PERSIST_FLUSH_SECONDS`` when fewer than ``PERSIST_BATCH_SIZE`` messages
  can be prefetched;
* every queued record is also in a pending set until handled, and a
  reconciler re-queues any lost in kombu's gap between popping a message and
  recording it as unacknowledged (``relay.broker.pending``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time

import redis
import sqlalchemy as sa
from celery import Celery
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery_batches import Batches, SimpleRequest
from flask import Flask
from prometheus_client import Counter, Histogram

from relay import storage
from relay.broker.connection import connect
from relay.broker.contract import PERSIST_TASK, retention_lock_key
from relay.broker.dead_letters import DeadLetters
from relay.broker.pending import Pending
from relay.logs import configure_logging
from relay.metrics import health_and_metrics_app, serve_in_thread, service_registry
from relay.records import utc_now
from relay.settings import load_settings
from relay.worker.persistence import Persister

log = logging.getLogger(__name__)
settings = load_settings()

# Task messages a pool process may hold prefetched: bounded in bytes, since no task message carries
# more than PERSIST_MESSAGE_MAX_BYTES of records.
PREFETCH_PER_PROCESS = max(1, settings.worker_prefetch_bytes // settings.persist_message_max_bytes)

# The worker's own metric families (relay/metrics.py explains why each service defines its own).
PERSISTED = Counter("persisted_messages_total", "Messages stored by the worker (new rows).")
PERSIST_BATCH = Histogram(
    "persist_batch_records", "Records per flushed worker batch.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
PERSIST_RETRIES = Counter("persist_retries_total", "Failed database writes that were retried.")
DEAD_LETTERS = Counter("dead_letters_total", "Messages moved to the dead-letter list.")
REQUEUED = Counter("requeued_lost_total", "Records re-queued by the reconciler after being lost in flight.")
EXPIRED_REMOVED = Counter("expired_messages_removed_total", "Messages removed by retention (RETENTION_DAYS).")

# kombu scans for a dead worker's messages every interval x throttle seconds (100 s by default); scan at
# half the visibility timeout so they come back when the timeout says.
UNACKED_RESTORE_INTERVAL = max(1, settings.celery_visibility_timeout // 2)

celery_app = Celery("tasks", broker=settings.redis_url)
celery_app.conf.update(
    task_default_queue=settings.persist_queue,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=PREFETCH_PER_PROCESS,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.celery_visibility_timeout,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
        # One worker at a time scans, under a Redis lock that expires after this. A worker that
        # loses Redis mid-scan (Redis restarted, the worker killed) cannot release it, and with
        # kombu's default (300 s) no worker redelivered anything for five minutes; the pending
        # reconciler waits for the unacknowledged set to empty, so it was held up as well. Two
        # scans overlapping are harmless (each message is restored in a WATCH transaction).
        "unacked_mutex_expire": UNACKED_RESTORE_INTERVAL,
    },
)


class ReconnectingBatches(Batches):
    """celery-batches' Batches, re-arming its flush timer when the consumer restarts.

    After a broker reconnect the consumer builds a new timer, but Batches
    keeps the handle of the old one and never arms the new: messages then
    wait until a full batch arrives (clokep/celery-batches#107, fixed
    upstream but not released in 0.11). Forgetting the handle when the
    strategy is rebuilt arms a fresh timer on the first message.
    """

    def Strategy(self, task: Batches, app: Celery, consumer: object) -> object:  # noqa: N802 (Celery's name)
        self._tref = None
        return super().Strategy(task, app, consumer)


_flask_app: Flask | None = None
_persister: tuple[Persister, Pending] | None = None


@setup_logging.connect
def _configure_logging(**_kwargs: object) -> None:
    """Log as every service does (JSON lines) instead of Celery's default format."""
    configure_logging("worker", settings.log_format, settings.log_level)


# Set once the consumer is running, cleared at shutdown: /healthz is a readiness check (compose's
# health check and a load balancer use it), not only "the process is alive".
_consuming = threading.Event()


@worker_ready.connect
def _mark_consuming(**_kwargs: object) -> None:
    _consuming.set()


# Set at shutdown: the retention thread finishes its batch, logs its sweep and ends (joined below), so
# its log line and its counter always agree.
_stopping = threading.Event()
_background: list[threading.Thread] = []


@worker_shutting_down.connect
def _mark_stopping(**_kwargs: object) -> None:
    _consuming.clear()
    _stopping.set()


@worker_shutdown.connect
def _join_background(**_kwargs: object) -> None:
    for thread in _background:
        thread.join(timeout=RETENTION_LEASE_SECONDS / 4)


@worker_init.connect
def _serve_metrics(**_kwargs: object) -> None:
    """Serve the pool's metrics (aggregated over processes) and ``/healthz`` from the main process."""
    if not settings.worker_metrics_port:
        return
    if not settings.metrics_multiprocess:
        log.warning("WORKER_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: pool metrics will be missing")
    client = connect(settings.redis_url, timeout=1.0)

    def problem() -> tuple[str, str] | None:
        if not _consuming.is_set():
            return "not_consuming", "The worker is starting or shutting down: it takes no tasks."
        try:
            client.ping()
        except (redis.RedisError, OSError):
            return "redis_unavailable", "Redis does not answer."
        return None

    app = health_and_metrics_app(service_registry(settings.metrics_multiprocess), problem)
    try:
        serve_in_thread(app, settings.bind_host, settings.worker_metrics_port)
    except OSError:
        # Another worker instance on this host serves it; with a shared PROMETHEUS_MULTIPROC_DIR
        # its endpoint already includes this instance's processes.
        log.info("worker metrics port %d is taken; another instance serves it", settings.worker_metrics_port)


@worker_ready.connect
def _start_reconciler(**_kwargs: object) -> None:
    """Periodically re-queue records lost between kombu's pop and its bookkeeping (relay.broker.pending)."""
    client = connect(settings.redis_url, timeout=5.0)
    pending = Pending(client, settings.persist_queue, settings.persist_message_max_bytes)
    interval = max(1.0, settings.pending_grace_seconds / 2)

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                requeued = pending.reconcile(settings.pending_grace_seconds)
            except Exception:
                log.warning("reconciling pending records failed", exc_info=True)
                continue
            if requeued:
                REQUEUED.inc(requeued)
                log.warning("re-queued %d record(s) lost in flight", requeued)

    threading.Thread(target=loop, name="reconcile-pending", daemon=True).start()


# How long one instance holds the retention lock without renewing it (it renews after every batch): if it
# dies, another takes over after this. Two sweeping at once would only repeat work (deletes are idempotent).
RETENTION_LEASE_SECONDS = 60


@worker_ready.connect
def _start_retention(**_kwargs: object) -> None:
    """Every ``RETENTION_INTERVAL_SECONDS``, remove messages older than ``RETENTION_DAYS`` (0: never).

    A thread of each worker instance's main process, like the reconciler, not
    Celery beat: beat must run exactly once per deployment, while every worker
    replica runs this and a Redis lock lets one of them sweep at a time.
    """
    if settings.retention_days <= 0:
        return
    client = connect(settings.redis_url, timeout=5.0)

    def loop() -> None:
        app = storage.create_app()
        while not _stopping.wait(settings.retention_interval_seconds):
            try:
                remove_expired_messages(app, client)
            except Exception:
                log.warning("removing expired messages failed", exc_info=True)

    thread = threading.Thread(target=loop, name="retention", daemon=True)
    _background.append(thread)
    thread.start()


def remove_expired_messages(app: Flask, client: redis.Redis) -> int:
    """Remove every message persisted before now minus ``RETENTION_DAYS``, in batches; return how many.

    Does nothing while another instance holds the lock. Each batch is one
    short transaction (``storage.remove_expired``); after each, it pauses as long as
    the batch took, so retention takes at most half the database's write time
    and SQLite's single writer lock goes to the inserting workers in between.
    Its connections are closed when it is done, so none is open most of the
    time in this process (which forks the pool's processes).
    """
    lock = client.lock(retention_lock_key(settings.persist_queue), timeout=RETENTION_LEASE_SECONDS)
    if not lock.acquire(blocking=False):
        return 0
    removed = batches = 0
    started = time.monotonic()
    try:
        with app.app_context():
            cutoff = utc_now() - dt.timedelta(days=settings.retention_days)
            try:
                while True:
                    began = time.monotonic()
                    count = storage.remove_expired(cutoff, settings.retention_batch_size)
                    removed, batches = removed + count, batches + 1
                    EXPIRED_REMOVED.inc(count)
                    if count < settings.retention_batch_size or _stopping.is_set():
                        break
                    lock.reacquire()
                    time.sleep(time.monotonic() - began)
            finally:
                storage.db.session.remove()
                storage.db.engine.dispose()
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
    if removed:
        log.info(
            "removed %d expired message(s) in %d batch(es) of at most %d in %.2f s",
            removed,
            batches,
            settings.retention_batch_size,
            time.monotonic() - started,
            extra={"count": removed},
        )
    return removed


@worker_process_init.connect
def _forget_parent_state(**_kwargs: object) -> None:
    """Drop any app, engine or client inherited across fork; each child makes its own."""
    global _flask_app, _persister
    _flask_app = None
    _persister = None


def flask_app() -> Flask:
    """Return this process's database app, creating it on first use."""
    global _flask_app
    if _flask_app is None:
        _flask_app = storage.create_app()
    return _flask_app


def _database_up() -> bool:
    try:
        storage.db.session.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        storage.db.session.rollback()
        return False
    finally:
        storage.db.session.remove()


def persister() -> tuple[Persister, Pending]:
    """Return this process's persister (wired to the database and the dead-letter list) and pending set."""
    global _persister
    if _persister is None:
        client = connect(settings.redis_url, timeout=5.0)
        dead_letters = DeadLetters(client, settings.dead_letter_key, settings.persist_queue)
        writer = Persister(
            storage.save_messages,
            _database_up,
            dead_letters.add,
            attempts=settings.persist_attempts,
            chunk_size=settings.persist_batch_size,
            budget=settings.celery_visibility_timeout / 4,
        )
        _persister = (writer, Pending(client, settings.persist_queue, settings.persist_message_max_bytes))
    return _persister


@celery_app.task(
    name=PERSIST_TASK,
    base=ReconnectingBatches,
    # Flush as soon as a process's worth has arrived: waiting for more than can be prefetched would
    # leave every batch to the flush timer.
    flush_every=min(settings.persist_batch_size, PREFETCH_PER_PROCESS),
    flush_interval=settings.persist_flush_seconds,
    acks_late=True,
)
def persist_messages(requests: list[SimpleRequest]) -> int:
    """Store every record of every buffered task message (each ``args[0]`` is a list of records)."""
    records = [record for request in requests for record in request.args[0]]
    writer, pending = persister()
    try:
        with flask_app().app_context():
            outcome = writer.persist(records)
        if outcome.deferred:
            pending.requeue(outcome.deferred)
    except BaseException:
        # Neither stored, dead-lettered nor re-queued (e.g. Redis down while dead-lettering): returning
        # would acknowledge the messages, so die instead and let them be redelivered.
        log.critical("could not store or dead-letter %d record(s); exiting", len(records), exc_info=True)
        os._exit(70)
    deferred = {r["id"] for r in outcome.deferred}
    try:
        pending.done([r["id"] for r in records if r["id"] not in deferred])
    except Exception:  # they stay pending; reconcile re-queues them, and storing again is a no-op
        log.warning("could not clear %d pending record(s)", len(records), exc_info=True)
    PERSISTED.inc(outcome.stored)
    PERSIST_BATCH.observe(len(records))
    PERSIST_RETRIES.inc(outcome.retries)
    DEAD_LETTERS.inc(outcome.dead_lettered)
    log.info(
        "stored %d of %d record(s) from %d message(s); dead-lettered %d, re-queued %d",
        outcome.stored,
        len(records),
        len(requests),
        outcome.dead_lettered,
        len(outcome.deferred),
        extra={"message_ids": [r["id"] for r in records]},  # every id, so any message can be followed
    )
    return outcome.stored
