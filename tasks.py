"""The Celery worker that persists messages.

Run it with ``celery -A tasks worker -Q persist`` (the queue name comes from
``PERSIST_QUEUE``). Reads ``REDIS_URL``, ``SQLALCHEMY_DATABASE_URI``,
``PERSIST_QUEUE`` and ``CELERY_VISIBILITY_TIMEOUT`` through ``config.py``.

The task is thin: it takes a list of plain-JSON records (see
``messages.py``) and calls ``db.save_messages``, which is idempotent, so
redelivery is harmless. Reliability settings, and why:

* ``acks_late``: the task message is acknowledged only after the rows are
  committed, so a worker that dies mid-task leaves it in Redis;
* ``task_reject_on_worker_lost``: a pool child killed by a signal gets its
  message requeued at once instead of being marked failed;
* ``visibility_timeout``: if the whole worker dies, its unacknowledged
  messages are redelivered after this many seconds;
* database errors are retried with exponential backoff, capped below the
  visibility timeout so a waiting retry is not also redelivered.
"""

from __future__ import annotations

import logging

from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

import db
from config import load_settings

log = logging.getLogger(__name__)
settings = load_settings()

celery_app = Celery("tasks", broker=settings.redis_url)
celery_app.conf.update(
    task_default_queue=settings.persist_queue,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout},
)

_flask_app: Flask | None = None


@worker_process_init.connect
def _forget_parent_app(**_kwargs: object) -> None:
    """Drop any app (and its engine) inherited across fork; each child makes its own."""
    global _flask_app
    _flask_app = None


def flask_app() -> Flask:
    """Return this process's database app, creating it on first use."""
    global _flask_app
    if _flask_app is None:
        _flask_app = db.create_app()
    return _flask_app


@celery_app.task(
    name="tasks.persist_messages",
    bind=True,
    autoretry_for=(SQLAlchemyError,),
    retry_backoff=True,
    retry_backoff_max=min(60, settings.celery_visibility_timeout // 2),
    max_retries=None,
)
def persist_messages(self: Task, records: list[dict[str, str]]) -> int:
    """Store ``records`` (each ``{"id", "received_at", "payload"}``) exactly once."""
    with flask_app().app_context():
        stored = db.save_messages(records)
    log.info("persisted %d of %d message(s) (first id %s)", stored, len(records), records[0]["id"] if records else "-")
    return stored
