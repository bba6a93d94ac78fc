"""The producer: accepting messages into Redis, then sending their persistence tasks.

The ingestion API writes, per request (or per group of concurrent requests),
in one atomic Lua script call (``_WRITE``):

* the records in the pending set (:mod:`relay.broker.pending`): from here on
  the message is accepted and will be stored exactly once;
* an XADD of each rendered websocket frame onto a capped Redis Stream,
  which every ``wsserver.py`` process reads (and replays from, for resume);
* with an ``Idempotency-Key``, the key with the body's fingerprint and the
  answer, so a repeat gets the same answer and another body gets 422.

Then it sends the records' Celery task messages (``send``, in practice
:func:`relay.broker.contract.send_records`: ``send_task`` with no retries,
each message at most ``PERSIST_MESSAGE_MAX_BYTES`` of records). The answer
does not wait on that send's outcome: if it fails, the records are pending
and a worker sends them again (``Pending.reconcile``).

Every write is fenced (see :class:`Producer`), so a lost answer is settled
before the API answers: a 5xx means nothing was accepted, except
:class:`OutcomeUnknown`, which says that it could not be found out.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis

from relay.broker.connection import never_connected
from relay.broker.contract import DEFAULT_MESSAGE_MAX_BYTES, Record, fence_key, pending_keys, unused_key
from relay.broker.group_commit import GroupCommit
from relay.broker.pending import send_or_leave_pending
from relay.records import live_frame, record_channel

log = logging.getLogger(__name__)

# One fenced, atomic write of a request's (or a group commit's) records. KEYS: 1 fence, 2 pending set,
# 3 pending records, 4 live stream, 5 idempotency key. ARGV: 1 fence ttl, 2 now, 3 live window,
# 4 record count N, 5 "1" when KEYS[5] is used, 6 idempotency ttl, 7 fingerprint, 8 answer,
# then N (id, record, frame, channel). The stream entry carries the channel beside the frame, so the
# websocket server selects by channel without parsing frames. The first command claims the fence: a
# writer that finds it taken (Producer.settle got there first) writes nothing. The outcome is left in
# the fence, so settle can read what happened.
_WRITE = """
if not redis.call('SET', KEYS[1], 'running', 'NX', 'EX', tonumber(ARGV[1])) then return 'aborted' end
local function finish(outcome)
  redis.call('SET', KEYS[1], outcome, 'EX', tonumber(ARGV[1]))
  return outcome
end
if ARGV[5] == '1' then
  local earlier = redis.call('GET', KEYS[5])
  if earlier then
    if string.sub(earlier, 1, #ARGV[7]) == ARGV[7] then
      return finish('repeat:' .. string.sub(earlier, #ARGV[7] + 2))
    end
    return finish('reused')
  end
end
local live = 1
for i = 0, tonumber(ARGV[4]) - 1 do
  local at = 9 + 4 * i
  redis.call('HSET', KEYS[3], ARGV[at], ARGV[at + 1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[at])
  local added = redis.pcall(
    'XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[at], 'channel', ARGV[at + 3], 'frame', ARGV[at + 2])
  if type(added) == 'table' and added.err then live = 0 end
end
-- The key last: a script that failed half-way (a wrongly typed key) must not leave it answering repeats.
if ARGV[5] == '1' then redis.call('SET', KEYS[5], ARGV[7] .. ':' .. ARGV[8], 'EX', tonumber(ARGV[6])) end
return finish('ok:' .. live)
"""
# How long a fence (and the outcome it holds) is kept: far longer than a write can wait in Redis.
FENCE_SECONDS = 60
# How long settling keeps asking a Redis that answers late: well inside the fence's life, so the
# fence is still there to hold the outcome (or to keep a late write out) when the answer comes.
BUSY_SECONDS = FENCE_SECONDS / 2


class OutcomeUnknown(redis.RedisError):
    """A write reached Redis, but whether it ran could not be found out: it may have been accepted.

    Redis went away after the write was sent (and did not come back within
    ``settle_seconds``), or stayed too slow to answer for ``busy_seconds``, or
    the write stopped half-way, or its fence was flushed before it was read.
    The API says so (``503 outcome_unknown``) instead of claiming that
    nothing was queued; a retry with the same ``Idempotency-Key`` is safe.
    """


@dataclass
class Enqueued:
    """What happened to a request's messages: the answer to send and whether live publish worked."""

    answer: dict
    repeated: bool = False
    live_published: bool = True


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used by this client for a different body."""


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key, scoped to its client and endpoint, and its body's fingerprint."""

    key: str
    fingerprint: str


class Producer:
    """Enqueues records for persistence and publishes them for live delivery.

    Every write is one Lua script call that is atomic in Redis and *fenced*:
    it first claims a one-off fence key. When the answer to a write is lost
    (a read timeout on a large write, a dropped connection), :meth:`settle`
    claims the same fence: if it wins, the write never ran and never will,
    so the request can truthfully answer 503; if it loses, the fence holds
    the write's outcome, and the request answers that. Either way a 5xx
    means nothing was accepted, and a 202 means everything was.

    After a write that accepted records, ``send`` sends their task messages
    (without it, as in tools that only publish live frames, the records wait
    in the pending set until a worker's reconciler sends them).
    """

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        stream: str,
        window: int,
        idempotency_ttl: int,
        *,
        send: Callable[[Sequence[Record]], object] | None = None,
        group_commit: bool = False,
        message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        probe_client: redis.Redis | None = None,
        bulk_client: redis.Redis | None = None,
        settle_seconds: float = 0.4,
        busy_seconds: float = BUSY_SECONDS,
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
        self.send = send
        self.pending_set, self.pending_records = pending_keys(queue)
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
        records: Sequence[Record],
        idempotency: Idempotency | None,
        answer: dict | None,
        fence: str | None = None,
    ) -> str:
        fence = fence or self.new_fence()
        args: list[bytes | str | int | float] = [
            FENCE_SECONDS,
            time.time(),
            self.window,
            len(records),
            "1" if idempotency else "0",
            self.idempotency_ttl,
            idempotency.fingerprint if idempotency else "",
            orjson.dumps(answer) if idempotency else "",
        ]
        for record in records:
            args += [record["id"], orjson.dumps(record), live_frame(record), record_channel(record)]
        keys = [fence, self.pending_set, self.pending_records, self.stream]
        keys.append(idempotency.key if idempotency else unused_key(self.queue))
        started = time.monotonic()
        outcome: str | bytes | None
        try:
            # A large write takes Redis long enough that a short read timeout would mostly end in
            # settling; it waits on a client with a longer one.
            bulk = sum(len(r["payload"]) for r in records) > self.message_max_bytes
            outcome = (self._bulk_write_script if bulk else self._write_script)(keys=keys, args=args)
        except redis.ResponseError:
            raise  # Redis ran the script and it failed (a misconfigured key): an answer, not a lost one
        except redis.RedisError as exc:
            if never_connected(exc):
                raise  # nothing was sent: no outcome to find out
            outcome = self.settle(fence, started)
            log.warning("lost the answer to a write of %d record(s) (%s); settled: %s", len(records), exc, outcome)
            if outcome is None:
                raise exc from None
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome == "running":  # the script stopped half-way (Redis does not undo what it had done)
            raise OutcomeUnknown("the write stopped half-way")
        if not outcome.startswith(("ok:", "repeat:", "reused")):  # "aborted": settling fenced it off
            raise redis.ConnectionError(f"the write did not run ({outcome})")
        if outcome.startswith("ok:"):
            self._send(records)
        return outcome

    def _send(self, records: Sequence[Record]) -> None:
        """Send the accepted records' task messages; a failure leaves them to the pending set."""
        if self.send is not None:
            send_or_leave_pending(self.send, records)

    def new_fence(self) -> str:
        """A fresh fence key for one write."""
        return fence_key(self.queue, uuid.uuid4().hex)

    def settle(self, fence: str, started: float) -> str | bytes | None:
        """Find out what became of a write whose answer was lost; None when it never ran (and never will).

        Claims ``fence`` first: the write, if it still arrives, then finds it
        taken and does nothing; if the claim fails, the fence holds the
        write's outcome. Every attempt is safe to repeat. While Redis is busy
        (timeouts, or errors such as ``LOADING``) it keeps asking for about
        ``busy_seconds`` (the last attempt may take one more read timeout), on
        the bulk client's longer read timeout after the first timeout, so that
        an answer queued behind large writes is waited for rather than asked
        again; while Redis is unreachable, for ``settle_seconds`` after
        ``started`` (monotonic). Past that, or if the fence is gone (flushed),
        it raises :class:`OutcomeUnknown`.
        """
        client = self.probe_client
        while True:
            try:
                if client.set(fence, "aborted", nx=True, ex=FENCE_SECONDS):
                    return None
                outcome = client.get(fence)
            except redis.ResponseError as exc:
                # Redis refuses the claim (out of memory, loading, a long script): the outcome may still be readable.
                with contextlib.suppress(redis.RedisError):
                    if (outcome := client.get(fence)) is not None:
                        return outcome
                problem, patience = exc, self.busy_seconds
            except redis.RedisError as exc:
                # Busy (it answers late): keep asking, on the longer read timeout. Unreachable: give up soon.
                problem = exc
                if never_connected(exc):
                    patience = self.settle_seconds
                else:
                    patience, client = self.busy_seconds, self.bulk_client
            else:
                if outcome is None:  # taken a moment ago, gone now: nothing tells what the write did
                    raise OutcomeUnknown("the write's fence vanished while its outcome was read")
                return outcome
            if time.monotonic() >= started + patience:
                raise OutcomeUnknown(f"the outcome of a write could not be found out ({problem})") from problem
            time.sleep(0.02)

    def ping(self) -> bool:
        """Tell whether Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False
