"""Putting accepted messages on Redis: the persistence queue and the live stream.

The ingestion API writes two things per request, in one pipelined round trip:

* a Celery task message (protocol v2, the Redis transport's JSON envelope)
  LPUSHed onto the persistence queue, which the worker in ``tasks.py``
  consumes like any task sent with ``apply_async``;
* an XADD of the rendered websocket frame onto a capped Redis Stream, which
  every ``wsserver.py`` process reads (and replays from, for resume).

Why not ``apply_async``: kombu's publish path costs several times the rest
of the request, retries for seconds when Redis is down (we must answer 503
within a second), and cannot share a round trip with the XADD. The envelope
is the documented task message protocol v2
(https://docs.celeryq.dev/en/stable/internals/protocol.html) without the
base64 body encoding; the end-to-end tests run a real Celery worker on it.

When the request carries an ``Idempotency-Key`` a small Lua script claims
the key and enqueues atomically, so two racing repeats cannot both enqueue.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from messages import format_time, live_frame, utc_now

PERSIST_TASK = "tasks.persist_messages"

# KEYS[1] idempotency key, KEYS[2] queue. ARGV[1] stored answer, ARGV[2] ttl, ARGV[3] task message.
# Returns the earlier answer for a repeat, or nil after enqueueing.
# KEYS[3], KEYS[4]: the pending set and its records; ARGV[4] {id: record json}, ARGV[5] now.
_CLAIM_AND_ENQUEUE = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('LPUSH', KEYS[2], ARGV[3])
for id, record in pairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', KEYS[4], id, record)
  redis.call('ZADD', KEYS[3], ARGV[5], id)
end
return false
"""

# Pending records older than ARGV[1], but only when nothing is queued or in flight (kombu's
# "unacked" hash): then any such record was lost between kombu's BRPOP and its bookkeeping.
_LOST_RECORDS = """
if redis.call('LLEN', KEYS[1]) > 0 or redis.call('HLEN', KEYS[2]) > 0 then return {} end
local lost = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = redis.call('HGET', KEYS[4], id)
  if record then table.insert(lost, record) else redis.call('ZREM', KEYS[3], id) end
end
return lost
"""
KOMBU_UNACKED_KEY = "unacked"  # kombu's Redis transport default (unacked_key)


class Pending:
    """Every queued record until a worker has handled it: the safety net under Celery's queue.

    kombu's Redis transport moves a message from the queue to its "unacked"
    bookkeeping in two steps (BRPOP, then MULTI/HSET): a worker killed, or a
    Redis crash, between them loses that task message. So every enqueue
    also records its records here, in the same transaction; the worker
    removes them once stored or dead-lettered; and :meth:`reconcile`, run
    periodically by a worker, re-queues records still pending after
    ``grace`` seconds at a moment when nothing is queued or in flight, which
    can only mean they were lost. Storage is idempotent, so a false alarm
    costs a redundant write, never a duplicate row.
    """

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.zset = f"{queue}:pending"
        self.records = f"{queue}:pending:records"
        self._lost = client.register_script(_LOST_RECORDS)

    def add(self, pipe: redis.client.Pipeline, records: Sequence[dict[str, str]]) -> None:
        pipe.hset(self.records, mapping={r["id"]: orjson.dumps(r) for r in records})
        pipe.zadd(self.zset, {r["id"]: time.time() for r in records})

    def done(self, ids: Sequence[str]) -> None:
        """Forget handled records (stored or dead-lettered)."""
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.records, *ids)
            pipe.zrem(self.zset, *ids)
            pipe.execute()

    def count(self) -> int:
        return int(self.client.zcard(self.zset))

    def reconcile(self, grace: float, limit: int = 1000) -> int:
        """Re-queue lost records (see the class docstring); return how many."""
        if not self.client.set(f"{self.zset}:reconciling", 1, nx=True, ex=max(1, int(grace))):
            return 0  # another worker is at it
        raw = self._lost(
            keys=[self.queue, KOMBU_UNACKED_KEY, self.zset, self.records], args=[time.time() - grace, limit]
        )
        if not raw:
            return 0
        records = [orjson.loads(r) for r in raw]
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.queue, task_message(records, self.queue))
        self.add(pipe, records)
        pipe.execute()
        return len(records)


def connect(url: str, timeout: float) -> redis.Redis:
    """Return a client that fails fast: short timeouts and no silent retries."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


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


@dataclass
class Enqueued:
    """What happened to a request's messages: the answer to send and whether live publish worked."""

    answer: dict
    repeated: bool = False
    live_published: bool = True


class GroupCommit:
    """Coalesce the concurrent requests of one process into one queue write.

    Request threads hand their records to :meth:`submit` and wait; one
    flusher thread takes everything pending, writes it as one task message
    (plus the live frames) in one round trip, and wakes every waiter with the
    outcome. There is no timer: while a write is in flight the next batch
    gathers, so a lone request goes out at once and batches grow with load.
    A request still answers only after its own records are in Redis, so a
    202 keeps its meaning; the worker then gets many records per task
    message instead of paying Celery's per-message cost for each.
    """

    def __init__(self, write: Callable[[Sequence[dict[str, str]]], bool], max_records: int = 1000) -> None:
        self._write = write
        self._max_records = max_records
        self._pending: list[tuple[Sequence[dict[str, str]], Future]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, records: Sequence[dict[str, str]], timeout: float = 10.0) -> bool:
        """Queue ``records`` with whatever else is pending; raise what the write raised."""
        future: Future = Future()
        with self._wake:
            if self._thread is None or self._pid != os.getpid():  # first use, or first use after a fork
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._pending.append((records, future))
            self._wake.notify()
        return future.result(timeout)

    def _take(self) -> list[tuple[Sequence[dict[str, str]], Future]]:
        with self._wake:
            while not self._pending:
                self._wake.wait()
            taken, count = [], 0
            while self._pending and (not taken or count + len(self._pending[0][0]) <= self._max_records):
                records, future = self._pending.pop(0)
                taken.append((records, future))
                count += len(records)
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            try:
                live_ok = self._write([record for records, _ in taken for record in records])
            except BaseException as exc:  # handed to every waiting request
                for _, future in taken:
                    future.set_exception(exc)
            else:
                for _, future in taken:
                    future.set_result(live_ok)


class Broker:
    """Enqueues records for persistence and publishes them for live delivery."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        stream: str,
        window: int,
        idempotency_ttl: int,
        group_commit: bool = False,
    ) -> None:
        self.client = client
        self.queue = queue
        self.stream = stream
        self.window = window
        self.idempotency_ttl = idempotency_ttl
        self._claim = client.register_script(_CLAIM_AND_ENQUEUE)
        self.pending = Pending(client, queue)
        self.group_commit = GroupCommit(self.write) if group_commit else None

    def _publish(self, pipe: redis.client.Pipeline, records: Sequence[dict[str, str]]) -> None:
        for record in records:
            fields = {"id": record["id"], "frame": live_frame(record)}
            pipe.xadd(self.stream, fields, maxlen=self.window, approximate=True)

    def enqueue(self, records: Sequence[dict[str, str]], answer: dict, idempotency_key: str | None = None) -> Enqueued:
        """Queue ``records`` durably, then publish them live (best effort).

        Raises ``redis.RedisError`` when the queue write fails: the caller
        must then not report success. A failed live publish is logged and
        reported in the result, never raised.
        """
        if idempotency_key is not None:
            message = task_message(records, self.queue, records[0]["id"] if len(records) == 1 else None)
            earlier = self._claim(
                keys=[f"idempotency:{idempotency_key}", self.queue, self.pending.zset, self.pending.records],
                args=[
                    orjson.dumps(answer),
                    self.idempotency_ttl,
                    message,
                    orjson.dumps({r["id"]: orjson.dumps(r).decode() for r in records}),
                    time.time(),
                ],
            )
            if earlier is not None:
                return Enqueued(orjson.loads(earlier), repeated=True)
            return self._publish_only(records, answer)
        if self.group_commit is not None:
            return Enqueued(answer, live_published=self.group_commit.submit(records))
        return Enqueued(answer, live_published=self.write(records))

    def write(self, records: Sequence[dict[str, str]]) -> bool:
        """LPUSH one task message for ``records`` and XADD their frames, in one round trip.

        Raises ``redis.RedisError`` when the queue write fails; returns
        whether every live publish succeeded.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.queue, task_message(records, self.queue, records[0]["id"] if len(records) == 1 else None))
        self.pending.add(pipe, records)
        self._publish(pipe, records)
        results = pipe.execute(raise_on_error=False)
        for result in results[:3]:
            if isinstance(result, Exception):
                raise result
        return not any(isinstance(r, Exception) for r in results[3:])

    def _publish_only(self, records: Sequence[dict[str, str]], answer: dict) -> Enqueued:
        pipe = self.client.pipeline(transaction=False)
        self._publish(pipe, records)
        try:
            pipe.execute()
        except redis.RedisError:
            return Enqueued(answer, live_published=False)
        return Enqueued(answer)

    def depth(self) -> int | None:
        """Task messages waiting on the persistence queue, or None when Redis does not answer."""
        try:
            return int(self.client.llen(self.queue))
        except redis.RedisError:
            return None

    def ping(self) -> bool:
        """Tell whether Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


class DeadLetters:
    """A durable Redis list of messages the database kept rejecting, with their error.

    Entries are ``{"record", "error", "failed_at"}``; replaying one puts its
    record back on the persistence queue and removes the entry, atomically.
    """

    def __init__(self, client: redis.Redis, key: str, queue: str) -> None:
        self.client = client
        self.key = key
        self.queue = queue

    def add(self, record: dict[str, str], error: str) -> None:
        entry = {"record": record, "error": error, "failed_at": format_time(utc_now())}
        self.client.lpush(self.key, orjson.dumps(entry))

    def count(self) -> int:
        return int(self.client.llen(self.key))

    def entries(self, limit: int = 100) -> list[dict]:
        """The oldest ``limit`` entries, oldest first."""
        return [orjson.loads(raw) for raw in reversed(self.client.lrange(self.key, -limit, -1))]

    def replay(self, ids: set[str] | None = None) -> int:
        """Re-queue the entries whose message id is in ``ids`` (all when None); return how many."""
        replayed = 0
        for raw in self.client.lrange(self.key, 0, -1):
            record = orjson.loads(raw)["record"]
            if ids is not None and record["id"] not in ids:
                continue
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(self.queue, task_message([record], self.queue, record["id"]))
            Pending(self.client, self.queue).add(pipe, [record])
            pipe.lrem(self.key, 1, raw)
            pipe.execute()
            replayed += 1
        return replayed
