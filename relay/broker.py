"""Putting accepted messages on Redis: the persistence queue and the live stream.

The ingestion API writes, per request (or per group of concurrent requests),
in one atomic Lua script call (``_WRITE``):

* Celery task messages (protocol v2, the Redis transport's JSON envelope)
  LPUSHed onto the persistence queue, which the worker in ``tasks.py``
  consumes like any task sent with ``apply_async``; each carries at most
  ``PERSIST_MESSAGE_MAX_BYTES`` of records, so a large batch becomes
  several task messages and the worker's prefetch is bounded in bytes;
* the records in the pending set (:class:`Pending`);
* an XADD of each rendered websocket frame onto a capped Redis Stream,
  which every ``wsserver.py`` process reads (and replays from, for resume);
* with an ``Idempotency-Key``, the key with the body's fingerprint and the
  answer, so a repeat gets the same answer and another body gets 422.

Why not ``apply_async``: kombu's publish path costs several times the rest
of the request, retries for seconds when Redis is down (we must answer 503
within a second), and cannot share an atomic write with the XADD. The
envelope is the documented task message protocol v2
(https://docs.celeryq.dev/en/stable/internals/protocol.html) without the
base64 body encoding; the end-to-end tests run a real Celery worker on it.

Every write is fenced (see :class:`Broker`), so a lost answer is settled
before the API answers: a 5xx means nothing was queued.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.records import format_time, live_frame, utc_now

log = logging.getLogger(__name__)

PERSIST_TASK = "tasks.persist_messages"
# Records per task message, in bytes, unless the caller says (PERSIST_MESSAGE_MAX_BYTES).
DEFAULT_MESSAGE_MAX_BYTES = 65_536

# One fenced, atomic write of a request's (or a group commit's) records. KEYS: 1 fence, 2 queue,
# 3 pending set, 4 pending records, 5 live stream, 6 idempotency key. ARGV: 1 fence ttl, 2 now,
# 3 live window, 4 task-message count T, 5 record count N, 6 "1" when KEYS[6] is used,
# 7 idempotency ttl, 8 fingerprint, 9 answer, then T task messages, then N (id, record, frame).
# The first command claims the fence: a writer that finds it taken (Broker.settle got there first)
# writes nothing. The outcome is left in the fence, so settle can read what happened.
_WRITE = """
if not redis.call('SET', KEYS[1], 'running', 'NX', 'EX', tonumber(ARGV[1])) then return 'aborted' end
local function finish(outcome)
  redis.call('SET', KEYS[1], outcome, 'EX', tonumber(ARGV[1]))
  return outcome
end
if ARGV[6] == '1' then
  local earlier = redis.call('GET', KEYS[6])
  if earlier then
    if string.sub(earlier, 1, #ARGV[8]) == ARGV[8] then
      return finish('repeat:' .. string.sub(earlier, #ARGV[8] + 2))
    end
    return finish('reused')
  end
end
local tasks = tonumber(ARGV[4])
for i = 10, 9 + tasks do redis.call('LPUSH', KEYS[2], ARGV[i]) end
local live = 1
local first = 10 + tasks
for i = 0, tonumber(ARGV[5]) - 1 do
  local at = first + 3 * i
  redis.call('HSET', KEYS[4], ARGV[at], ARGV[at + 1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[at])
  local added = redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[at], 'frame', ARGV[at + 2])
  if type(added) == 'table' and added.err then live = 0 end
end
-- The key last: a script that failed half-way (a wrongly typed key) must not leave it answering repeats.
if ARGV[6] == '1' then redis.call('SET', KEYS[6], ARGV[8] .. ':' .. ARGV[9], 'EX', tonumber(ARGV[7])) end
return finish('ok:' .. live)
"""
# How long a fence (and the outcome it holds) is kept: far longer than a write can wait in Redis.
FENCE_SECONDS = 60

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

    def __init__(self, client: redis.Redis, queue: str, message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES) -> None:
        self.client = client
        self.queue = queue
        self.message_max_bytes = message_max_bytes
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
        self.requeue(records)
        return len(records)

    def requeue(self, records: Sequence[dict[str, str]]) -> None:
        """Queue ``records`` again as new task messages, atomically with refreshing their pending entries."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.queue, *task_messages(records, self.queue, self.message_max_bytes))
        self.add(pipe, records)
        pipe.execute()


def _never_connected(exc: redis.RedisError) -> bool:
    """Tell whether ``exc`` is a failure to open a connection: then no command reached Redis.

    redis-py raises the same classes for failed connects and for failures on an
    open connection, and says which in the message ("Error 111 connecting to",
    "Timeout connecting to server").
    """
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and "connecting" in str(exc).lower()


def connect(url: str, timeout: float, read_timeout: float | None = None) -> redis.Redis:
    """Return a client that fails fast: short timeouts (``read_timeout`` for answers) and no silent retries."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout if read_timeout is None else read_timeout,
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


class QueueBusy(Exception):
    """A request waited too long for its turn to be written; none of it was written."""


@dataclass
class Enqueued:
    """What happened to a request's messages: the answer to send and whether live publish worked."""

    answer: dict
    repeated: bool = False
    live_published: bool = True


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used by this client for a different body."""


class _Waiter:
    """One request's records waiting in a group commit (compared by identity)."""

    __slots__ = ("future", "records")

    def __init__(self, records: Sequence[dict[str, str]]) -> None:
        self.records = records
        self.future: Future = Future()


class GroupCommit:
    """Coalesce the concurrent requests of one process into one queue write.

    Request threads hand their records to :meth:`submit` and wait; one
    flusher thread takes everything pending, writes it in one round trip,
    and wakes every waiter with the outcome. There is no timer: while a write
    is in flight the next batch gathers, so a lone request goes out at once
    and batches grow with load. A request still answers only after its own
    records are in Redis, so a 202 keeps its meaning.

    A request that waits ``wait_seconds`` without being taken is withdrawn
    (:class:`QueueBusy`: nothing of it was written, so a 503 is the truth).
    One already taken waits for its write, which the Redis timeouts and
    :meth:`Broker.settle` bound, so it never answers before knowing.
    """

    def __init__(
        self,
        write: Callable[[Sequence[dict[str, str]]], bool],
        max_records: int = 1000,
        max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        wait_seconds: float = 5.0,
    ) -> None:
        self._write = write
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._wait_seconds = wait_seconds
        self._pending: list[_Waiter] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def takes(self, records: Sequence[dict[str, str]]) -> bool:
        """Tell whether ``records`` are small enough to share a write; big ones gain nothing by waiting."""
        return len(records) * 2 <= self.max_records and sum(len(r["payload"]) for r in records) * 2 <= self.max_bytes

    def submit(self, records: Sequence[dict[str, str]]) -> bool:
        """Queue ``records`` with whatever else is pending; raise what the write raised."""
        waiter = _Waiter(records)
        with self._wake:
            if self._thread is None or self._pid != os.getpid():  # first use, or first use after a fork
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._pending.append(waiter)
            self._wake.notify()
        try:
            return waiter.future.result(self._wait_seconds)
        except FutureTimeout:
            with self._wake:
                if any(w is waiter for w in self._pending):
                    self._pending = [w for w in self._pending if w is not waiter]
                    raise QueueBusy(f"not written within {self._wait_seconds:g} s") from None
        return waiter.future.result()  # taken: its write settles in bounded time

    def _take(self) -> list[_Waiter]:
        with self._wake:
            while not self._pending:
                self._wake.wait()
            taken, count = [], 0
            while self._pending and (not taken or count + len(self._pending[0].records) <= self.max_records):
                waiter = self._pending.pop(0)
                taken.append(waiter)
                count += len(waiter.records)
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            try:
                live_ok = self._write([record for waiter in taken for record in waiter.records])
            except BaseException as exc:  # handed to every waiting request
                for waiter in taken:
                    waiter.future.set_exception(exc)
            else:
                for waiter in taken:
                    waiter.future.set_result(live_ok)


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key, scoped to its client and endpoint, and its body's fingerprint."""

    key: str
    fingerprint: str


class Broker:
    """Enqueues records for persistence and publishes them for live delivery.

    Every write is one Lua script call that is atomic in Redis and *fenced*:
    it first claims a one-off fence key. When the answer to a write is lost
    (a read timeout on a large write, a dropped connection), :meth:`settle`
    claims the same fence: if it wins, the write never ran and never will,
    so the request can truthfully answer 503; if it loses, the fence holds
    the write's outcome, and the request answers that. Either way a 5xx
    means nothing was queued, and a 202 means everything was.
    """

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        stream: str,
        window: int,
        idempotency_ttl: int,
        *,
        group_commit: bool = False,
        message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        probe_client: redis.Redis | None = None,
        bulk_client: redis.Redis | None = None,
        settle_seconds: float = 0.4,
        busy_seconds: float = 10.0,
    ) -> None:
        self.client = client
        self.queue = queue
        self.stream = stream
        self.window = window
        self.idempotency_ttl = idempotency_ttl
        self.message_max_bytes = message_max_bytes
        self.probe_client = probe_client or client
        self.bulk_client = bulk_client or client
        self.settle_seconds = settle_seconds
        self.busy_seconds = busy_seconds
        self._write_script = client.register_script(_WRITE)
        self._bulk_write_script = self.bulk_client.register_script(_WRITE)
        self.pending = Pending(client, queue, message_max_bytes)
        self.group_commit = GroupCommit(self.write, max_bytes=message_max_bytes) if group_commit else None

    def enqueue(
        self, records: Sequence[dict[str, str]], answer: dict, idempotency: Idempotency | None = None
    ) -> Enqueued:
        """Queue ``records`` durably and publish them live (best effort), in one atomic write.

        Raises ``redis.RedisError`` or :class:`QueueBusy` when nothing was
        queued, and :class:`IdempotencyKeyReused` when the key was used for
        another body. A failed live publish is reported in the result.
        """
        if idempotency is not None:
            outcome = self._run(records, idempotency, answer)
            if outcome == "reused":
                raise IdempotencyKeyReused(idempotency.key)
            if outcome.startswith("repeat:"):
                return Enqueued(orjson.loads(outcome[len("repeat:") :]), repeated=True)
            return Enqueued(answer, live_published=outcome == "ok:1")
        if self.group_commit is not None and self.group_commit.takes(records):
            return Enqueued(answer, live_published=self.group_commit.submit(records))
        return Enqueued(answer, live_published=self.write(records))

    def write(self, records: Sequence[dict[str, str]], fence: str | None = None) -> bool:
        """Queue ``records`` and publish their frames in one fenced write; return whether live publish worked.

        Raises ``redis.RedisError`` when nothing was queued. ``fence`` names
        the write's fence key (a fresh one by default).
        """
        return self._run(records, None, None, fence) == "ok:1"

    def _run(
        self,
        records: Sequence[dict[str, str]],
        idempotency: Idempotency | None,
        answer: dict | None,
        fence: str | None = None,
    ) -> str:
        fence = fence or self.new_fence()
        messages = task_messages(records, self.queue, self.message_max_bytes)
        args: list[bytes | str | int | float] = [
            FENCE_SECONDS,
            time.time(),
            self.window,
            len(messages),
            len(records),
            "1" if idempotency else "0",
            self.idempotency_ttl,
            idempotency.fingerprint if idempotency else "",
            orjson.dumps(answer) if idempotency else "",
            *messages,
        ]
        for record in records:
            args += [record["id"], orjson.dumps(record), live_frame(record)]
        keys = [fence, self.queue, self.pending.zset, self.pending.records, self.stream]
        keys.append(idempotency.key if idempotency else f"{self.queue}:no-idempotency")
        started = time.monotonic()
        outcome: str | bytes | None
        try:
            # A write of several task messages takes Redis long enough that a short read timeout
            # would mostly end in settling; it waits on a client with a longer one.
            script = self._bulk_write_script if len(messages) > 1 else self._write_script
            outcome = script(keys=keys, args=args)
        except redis.ResponseError:
            raise  # Redis ran the script and it failed (a misconfigured key): an answer, not a lost one
        except redis.RedisError as exc:
            if _never_connected(exc):
                raise  # nothing was sent: no outcome to find out
            outcome = self.settle(fence, started)
            log.warning("lost the answer to a write of %d record(s) (%s); settled: %s", len(records), exc, outcome)
            if outcome is None:
                raise exc from None
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if not outcome.startswith(("ok:", "repeat:", "reused")):  # "aborted", or a script that never finished
            raise redis.ConnectionError(f"the write did not run to its end ({outcome})")
        return outcome

    def new_fence(self) -> str:
        """A fresh fence key for one write."""
        return f"{self.queue}:fence:{uuid.uuid4().hex}"

    def settle(self, fence: str, started: float) -> str | bytes | None:
        """Find out what became of a write whose answer was lost; None when it never ran (and never will).

        Claims ``fence`` first: the write, if it still arrives, then finds it
        taken and does nothing. Every attempt is safe to repeat. While Redis
        is busy (timeouts) it keeps asking for up to ``busy_seconds``; while
        it is unreachable, for ``settle_seconds`` after ``started``
        (monotonic), then the outcome is unknown and this raises.
        """
        while True:
            try:
                if self.probe_client.set(fence, "aborted", nx=True, ex=FENCE_SECONDS):
                    return None
                return self.probe_client.get(fence)
            except redis.RedisError as exc:
                # Busy (it answers late): keep asking. Unreachable: give up soon; the outcome is then unknown.
                patience = self.settle_seconds if _never_connected(exc) else self.busy_seconds
                if time.monotonic() >= started + patience:
                    raise
            time.sleep(0.02)

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


# KEYS[1] the dead-letter list, KEYS[2] its index of message ids. ARGV[1] message id, ARGV[2] entry.
# Returns 1 after adding the entry, 0 when that message is already dead-lettered.
_DEAD_LETTER_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], 1) == 0 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""


class DeadLetters:
    """A durable Redis list of messages the database kept rejecting, with their error.

    Entries are ``{"record", "error", "failed_at"}``, at most one per message
    id (the hash ``<key>:ids`` indexes them): a redelivered task message
    isolated a second time adds nothing. Replaying one puts its record back
    on the persistence queue and removes the entry and its index, atomically.
    """

    def __init__(self, client: redis.Redis, key: str, queue: str) -> None:
        self.client = client
        self.key = key
        self.index = f"{key}:ids"
        self.queue = queue
        self._add_once = client.register_script(_DEAD_LETTER_ONCE)

    def add(self, record: dict[str, str], error: str) -> bool:
        """Dead-letter ``record`` unless it already is; return whether it was added."""
        entry = {"record": record, "error": error, "failed_at": format_time(utc_now())}
        return bool(self._add_once(keys=[self.key, self.index], args=[record["id"], orjson.dumps(entry)]))

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
            pipe.hdel(self.index, record["id"])
            pipe.execute()
            replayed += 1
        return replayed
