"""The Celery worker that persists messages.

Run it with ``celery -A tasks worker -Q persist`` (the queue name comes from
``PERSIST_QUEUE``). Reads ``REDIS_URL``, ``SQLALCHEMY_DATABASE_URI``,
``PERSIST_QUEUE``, ``CELERY_VISIBILITY_TIMEOUT``, ``PERSIST_BATCH_SIZE``,
``PERSIST_MESSAGE_MAX_BYTES``, ``WORKER_PREFETCH_BYTES``,
``PERSIST_ATTEMPTS``, ``PENDING_GRACE_SECONDS``, ``DEAD_LETTER_KEY``,
``RETENTION_DAYS``, ``RETENTION_INTERVAL_SECONDS``, ``RETENTION_BATCH_SIZE``,
``WORKER_METRICS_PORT``, ``BIND_HOST`` and ``PROMETHEUS_MULTIPROC_DIR`` through
``relay/settings.py``. The metrics port also answers ``GET /healthz``: 200 while the
consumer runs and Redis answers, else 503 (starting, shutting down, no Redis, or a
Redis whose ``maxmemory-policy`` evicts: ``redis_evicting``).

Every task message is a plain Celery task (``relay.broker.contract``)
carrying a list of records: one for a lone POST, many when the ingestion
API's group commit merged concurrent requests or for a batch POST (at most
``PERSIST_MESSAGE_MAX_BYTES`` of records each). The task stores them in
transactions of up to ``PERSIST_BATCH_SIZE`` (``persistence.Persister``,
``storage.save_messages``: idempotent, so a redelivered message is stored
once). The worker sends task events, so Flower and ``celery events`` show
every persistence task, its state, runtime and worker.

Reliability, and why:

* an accepted record is in the pending set until this worker has stored or
  dead-lettered it (``relay.broker.pending``); the reconciler thread of each
  worker instance sends again any record idle for ``PENDING_GRACE_SECONDS``
  while the queue is empty. That covers a task message whose send failed,
  one lost between kombu's pop and its bookkeeping (a worker killed there),
  and a task that failed half-way (Redis down while dead-lettering: the task
  fails, is acknowledged, and its records are sent again);
* messages are acknowledged only after the task returns (``acks_late``), so
  a worker (or pool process) that dies has its messages redelivered after
  ``CELERY_VISIBILITY_TIMEOUT`` seconds, unless the reconciler was quicker;
* while the task works, its records' pending entries are kept fresh, so a
  long database outage (waited out with backoff) does not look like a loss;
* records the database keeps rejecting go to the dead-letter list
  (``scripts/dead_letters.py``), once each even if their task message is
  delivered twice; only an error about the record counts as a rejection
  (``relay/db_errors.py``): a database that answers but cannot write (disk
  full, read-only) is an outage, waited out like one that does not answer;
* a task's handling (outages aside) is bounded by a quarter of the
  visibility timeout: past it, the records not yet handled are sent again
  as new task messages and the task returns, so isolating poison records
  never outlives the visibility timeout nor holds up other messages for long;
* memory is bounded in bytes: each pool process prefetches at most
  ``WORKER_PREFETCH_BYTES // PERSIST_MESSAGE_MAX_BYTES`` task messages, and
  no task message carries more than ``PERSIST_MESSAGE_MAX_BYTES`` of records;
* the workers free Redis' memory, so they must run when it is full: the
  ingestion API stops at ``REDIS_MEMORY_HIGH_WATER`` of ``maxmemory``,
  leaving their writes room (``relay.broker.memory``). Should Redis be at
  ``maxmemory`` all the same (another tenant filled it), kombu's bookkeeping
  write is refused (OOM, a kombu "channel error"); with
  ``broker_channel_error_retry`` the consumer reconnects and tries again
  (a few times a second, logging each attempt) instead of ending the
  worker, and resumes once Redis has room; a task message popped before
  its bookkeeping failed comes back from the pending set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
import sqlalchemy as sa
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from flask import Flask

from relay import db_errors, storage
from relay.broker.connection import connect
from relay.broker.contract import PERSIST_TASK, make_celery, queue_depth, retention_lock_key, send_records
from relay.broker.dead_letters import DeadLetters
from relay.broker.memory import Memory, evicting
from relay.broker.pending import Pending
from relay.broker.positions import Positions
from relay.logs import configure_logging
from relay.metrics import health_and_metrics_app, serve_in_thread, service_registry
from relay.records import parse_time, utc_now
from relay.settings import load_settings
from relay.worker.metrics import (
    DEAD_LETTERS,
    EXPIRED_REMOVED,
    PERSIST_BATCH,
    PERSIST_RETRIES,
    PERSISTED,
    REQUEUED,
    backlog_gauges,
    observe_stored,
)
from relay.worker.persistence import Persister

log = logging.getLogger(__name__)
settings = load_settings()

# Task messages a pool process may hold prefetched: bounded in bytes, since no task message carries
# more than PERSIST_MESSAGE_MAX_BYTES of records.
PREFETCH_PER_PROCESS = max(1, settings.worker_prefetch_bytes // settings.persist_message_max_bytes)

celery_app = make_celery(settings)
celery_app.conf.update(
    worker_prefetch_multiplier=PREFETCH_PER_PROCESS,
    worker_hijack_root_logger=False,
    # Redis refusing kombu's bookkeeping (OOM at maxmemory: a ResponseError, which kombu counts as a
    # channel error) restarts the consumer, which reconnects and retries, instead of ending the worker.
    broker_channel_error_retry=True,
)
# Sending task messages again (the reconciler, deferred records, dead-letter replays) goes through an app
# of its own with short timeouts and no reconnection loop, so a send to a Redis that is away fails in
# seconds (the records stay pending) instead of holding a task or the reconciler up.
sender_app = make_celery(settings, timeout=5.0)
send = functools.partial(send_records, sender_app, settings.persist_queue, max_bytes=settings.persist_message_max_bytes)


_flask_app: Flask | None = None
_persister: tuple[Persister, Pending, Positions] | None = None


@setup_logging.connect
def _configure_logging(**_kwargs: object) -> None:
    """Log as every service does (JSON lines) instead of Celery's default format."""
    configure_logging("worker", settings.log_format, settings.log_level)
    # Celery's own "Task ... received" and "... succeeded in" lines: our one line per task says more (the
    # message ids) and each line is work for the worker and for whatever relays its output.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    """Serve the pool's metrics (aggregated over processes), the backlog gauges and ``/healthz``."""
    if not settings.worker_metrics_port:
        return
    if not settings.metrics_multiprocess:
        log.warning("WORKER_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: pool metrics will be missing")
    client = connect(settings.redis_url, timeout=1.0)

    def problem() -> tuple[str, str] | None:
        if not _consuming.is_set():
            return "not_consuming", "The worker is starting or shutting down: it takes no tasks."
        try:
            memory = Memory.from_info(client.info("memory"))
        except (redis.RedisError, OSError):
            return "redis_unavailable", "Redis does not answer."
        if (evicts := evicting(memory)) is not None:  # it may drop what the workers have yet to store
            return evicts.code, evicts.message
        return None

    # The backlog gauges read Redis at each scrape (relay/worker/metrics.py): one value, not one per process.
    pending = Pending(client, settings.persist_queue, send)
    gauges = backlog_gauges(pending, DeadLetters(client, settings.dead_letter_key))
    app = health_and_metrics_app(service_registry(settings.metrics_multiprocess, gauges), problem)
    try:
        serve_in_thread(app, settings.bind_host, settings.worker_metrics_port)
    except OSError:
        # Another worker instance on this host serves it; with a shared PROMETHEUS_MULTIPROC_DIR
        # its endpoint already includes this instance's processes.
        log.info("worker metrics port %d is taken; another instance serves it", settings.worker_metrics_port)


def seed_positions(positions: Positions) -> int:
    """Raise the Redis position counters above every stored position and offset; return the last position."""
    app = storage.create_app()  # the main process's own, closed after: the pool's processes make theirs
    with app.app_context():
        try:
            last_position, last_offsets = storage.position_floors()
        finally:
            storage.db.session.remove()
            storage.db.engine.dispose()
    return positions.seed(last_position, last_offsets)


@worker_ready.connect
def _start_reconciler(**_kwargs: object) -> None:
    """Seed the position counters, then periodically send again the records no task message carries any more.

    The counters are seeded at start-up (a merge that only raises them) and
    again whenever the reconciler finds them gone (relay.broker.positions).
    """
    client = connect(settings.redis_url, timeout=5.0)
    pending = Pending(client, settings.persist_queue, send)
    positions = Positions(client, settings.persist_queue)
    interval = max(1.0, settings.pending_grace_seconds / 2)

    def depth() -> int:
        return queue_depth(sender_app, settings.persist_queue)

    def seed() -> None:
        try:
            log.info("position counters seeded: last position %d", seed_positions(positions))
        except Exception:
            log.warning("seeding the position counters failed; retrying", exc_info=True)

    def loop() -> None:
        seed()
        while True:
            time.sleep(interval)
            try:
                if not positions.seeded():
                    seed()
            except redis.RedisError:
                log.warning("could not read the position counters", exc_info=True)
            try:
                requeued = pending.reconcile(settings.pending_grace_seconds, depth)
            except Exception:
                log.warning("reconciling pending records failed", exc_info=True)
                continue
            if requeued:
                REQUEUED.inc(requeued)
                log.warning("re-queued %d record(s) lost in flight", requeued)

    threading.Thread(target=loop, name="reconcile-pending", daemon=True).start()


# How often each worker instance folds the channel deltas into the channels table (relay/storage.py), and
# how many deltas one fold transaction takes.
FOLD_INTERVAL_SECONDS = 1.0
FOLD_BATCH = 10_000


@worker_ready.connect
def _start_folding(**_kwargs: object) -> None:
    """Fold what saves added to each channel into ``channels``, every ``FOLD_INTERVAL_SECONDS``."""

    def loop() -> None:
        app = storage.create_app()
        while not _stopping.wait(FOLD_INTERVAL_SECONDS):
            try:
                with app.app_context():
                    while storage.fold_channel_deltas(FOLD_BATCH) == FOLD_BATCH:
                        pass
            except Exception:
                log.warning("folding channel counts failed", exc_info=True)
            finally:
                with app.app_context():
                    storage.db.session.remove()

    thread = threading.Thread(target=loop, name="fold-channels", daemon=True)
    _background.append(thread)
    thread.start()


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
    """Drop any app, engine or client inherited across fork; each child makes its own, at once.

    Made here rather than on the first task (nothing here connects, so a database that is
    away cannot hold the child's start up): the first message after a start is not late by them.
    """
    global _flask_app, _persister
    _flask_app = None
    _persister = None
    flask_app()
    persister()


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


def persister() -> tuple[Persister, Pending, Positions]:
    """Return this process's persister (wired to the database and the dead-letter list), pending set and positions."""
    global _persister
    if _persister is None:
        client = connect(settings.redis_url, timeout=5.0)
        pending = Pending(client, settings.persist_queue, send)
        dead_letters = DeadLetters(client, settings.dead_letter_key)
        writer = Persister(
            functools.partial(storage.save_messages, on_stored=observe_stored),
            _database_up,
            dead_letters.add,
            about_the_record=db_errors.about_the_record,
            attempts=settings.persist_attempts,
            chunk_size=settings.persist_batch_size,
            budget=settings.celery_visibility_timeout / 4,
        )
        _persister = (writer, pending, Positions(client, settings.persist_queue))
    return _persister


class Freshness:
    """Keeps the pending entries of the records this process is working on fresh.

    One daemon thread per process touches them every third of
    ``PENDING_GRACE_SECONDS`` while a task runs (a database outage can hold a
    task for long), so the reconciler does not take them for lost; but only
    for ``CELERY_VISIBILITY_TIMEOUT`` seconds, after which Celery would
    redeliver the task anyway: a task stuck past that (on a Redis that went
    away, say) no longer holds its records back. A task whose records
    already waited a third of the grace (a backlog) touches them at its start.
    """

    def __init__(self, grace: float, longest: float) -> None:
        self.interval = max(0.5, grace / 3)
        self.longest = longest
        self.ids: list[str] = []
        self.until = 0.0
        self.pending: Pending | None = None
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def working_on(self, pending: Pending, records: list[dict[str, Any]]) -> Iterator[None]:
        self.pending = pending
        if self._thread is None:  # per process: created after the pool's fork
            self._thread = threading.Thread(target=self._loop, name="pending-freshness", daemon=True)
            self._thread.start()
        ids = [r["id"] for r in records]
        oldest = min((r["received_at"] for r in records), default=None)
        if oldest is not None and (utc_now() - parse_time(oldest)).total_seconds() > self.interval:
            pending.touch(ids)
        self.ids, self.until = ids, time.monotonic() + self.longest
        try:
            yield
        finally:
            self.ids = []

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            ids, pending = self.ids, self.pending
            if ids and pending is not None and time.monotonic() < self.until:
                try:
                    pending.touch(ids)
                except Exception:  # Redis away: the reconciler cannot run either
                    log.warning("could not refresh %d pending record(s)", len(ids), exc_info=True)


freshness = Freshness(settings.pending_grace_seconds, settings.celery_visibility_timeout)


@celery_app.task(name=PERSIST_TASK, acks_late=True)
def persist_messages(records: list[dict[str, Any]]) -> int:
    """Store the records of one task message; return how many new rows that made.

    An exception (Redis down while dead-lettering, say) fails the task; its
    records stay pending and are sent again by the reconciler.
    """
    writer, pending, positions = persister()
    positions.place(records)  # only records queued by the release before positions have none
    with freshness.working_on(pending, records), flask_app().app_context():
        outcome = writer.persist(records)
    if outcome.deferred:
        pending.requeue(outcome.deferred)
    deferred = {r["id"] for r in outcome.deferred}
    try:
        pending.done([r["id"] for r in records if r["id"] not in deferred])
    except Exception:  # they stay pending; reconcile sends them again, and storing again is a no-op
        log.warning("could not clear %d pending record(s)", len(records), exc_info=True)
    PERSISTED.inc(outcome.stored)
    PERSIST_BATCH.observe(len(records))
    PERSIST_RETRIES.inc(outcome.retries)
    DEAD_LETTERS.inc(outcome.dead_lettered)
    log.info(
        "stored %d of %d record(s); dead-lettered %d, re-queued %d",
        outcome.stored,
        len(records),
        outcome.dead_lettered,
        len(outcome.deferred),
        extra={"message_ids": [r["id"] for r in records]},  # every id, so any message can be followed
    )
    return outcome.stored
