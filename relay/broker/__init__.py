"""Redis between the ingestion API and the worker: one module per concept.

* :mod:`~relay.broker.contract`: what both sides agree on: the task name, its
  argument shape, the Celery app, sending records, and the Redis key names.
* :mod:`~relay.broker.connection`: Redis clients that fail fast.
* :mod:`~relay.broker.producer`: the ingestion API's fenced, atomic write of a
  request's pending entries, live frames and idempotency key, then the send
  of its task message.
* :mod:`~relay.broker.group_commit`: concurrent requests of one process
  sharing one such write.
* :mod:`~relay.broker.sender`: task messages that leave at once when
  nothing is in flight and gather records while something is.
* :mod:`~relay.broker.pending`: every queued record until a worker handled
  it, the safety net under Celery's queue.
* :mod:`~relay.broker.dead_letters`: records the database kept rejecting.
"""
