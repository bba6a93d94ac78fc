"""Entry point of the worker: ``celery -A tasks worker -Q persist`` (code in ``relay/worker``)."""

from relay.worker.tasks import celery_app, persist_messages

__all__ = ["celery_app", "persist_messages"]
