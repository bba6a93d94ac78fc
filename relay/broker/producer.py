"""The producer: accepting messages into Redis, then sending their persistence tasks.

The ingestion API writes, per request (or per group of concurrent requests),
in one atomic Lua script call (``_WRITE``):

* the records in the pending set (:mod:`relay.broker.pending`): from here on
  the message is accepted and will be stored exactly once;
* each record's ``offset`` in its channel and ``position`` among all
  (:mod:`relay.broker.positions`), spliced into the record and its frame;
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
from relay.broker.contract import (
    DEFAULT_MESSAGE_MAX_BYTES,
    Record,
    fence_key,
    pending_keys,
    unused_key,
)
from relay.broker.group_commit import GroupCommit
from relay.broker.pending import send_or_leave_pending
from relay.broker.positions import Positions, assign
from relay.broker.sender import GatheringSender
from relay.records import live_frame, record_channel

log = logging.getLogger(__name__)

# One fenced, atomic write of a request's (or a group commit's) records. KEYS: 1 fence, 2 pending set,
# 3 pending records, 4 live stream, 5 idempotency key, 6 position counters, 7 pending positions. ARGV:
# 1 fence ttl, 2 now, 3 live window, 4 record count N, 5 the idempotency key's answer kind ("0": no key;
# "1": one message, its answer gets "offset"; "2": a batch, "offsets"), 6 idempotency ttl, 7 fingerprint,
# 8 answer, then N (id, record, frame, channel). The first command claims the fence: a writer that finds it
# taken (Producer.settle got there first) writes nothing. The records and frames come as JSON objects; each
# gets its offset and position (relay.broker.positions) spliced in before its closing brace. The stream
# entry carries the channel and position beside the frame, so the websocket server selects and resumes
# without parsing frames. The outcome, with where the records were placed, is left in the fence, so settle
# can read what happened: ``ok:<live>:<first position>:<offsets>:<in flight>``, the last being how many
# accepted records were pending before this write (the sender's load signal, relay.broker.sender).
_WRITE = """
if not redis.call('SET', KEYS[1], 'running', 'NX', 'EX', tonumber(ARGV[1])) then return 'aborted' end
local function finish(outcome)
  redis.call('SET', KEYS[1], outcome, 'EX', tonumber(ARGV[1]))
  return outcome
end
if ARGV[5] ~= '0' then
  local earlier = redis.call('GET', KEYS[5])
  if earlier then
    if string.sub(earlier, 1, #ARGV[7]) == ARGV[7] then
      return finish('repeat:' .. string.sub(earlier, #ARGV[7] + 2))
    end
    return finish('reused')
  end
end
if redis.call('HEXISTS', KEYS[6], '*') == 0 then return finish('unseeded') end
local count = tonumber(ARGV[4])
local in_flight = redis.call('ZCARD', KEYS[2])
local first = redis.call('HINCRBY', KEYS[6], '*', count) - count + 1
local live = 1
local offsets = {}
for i = 0, count - 1 do
  local at = 9 + 4 * i
  local position = string.format('%d', first + i)
  local offset = string.format('%d', redis.call('HINCRBY', KEYS[6], ARGV[at + 3], 1))
  offsets[i + 1] = offset
  local placed = ',"offset":' .. offset .. ',"position":' .. position .. '}'
  redis.call('HSET', KEYS[3], ARGV[at], string.sub(ARGV[at + 1], 1, -2) .. placed)
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[at])
  redis.call('ZADD', KEYS[7], 'NX', position, ARGV[at])  -- an id accepted again keeps its lower position
  local added = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[at], 'channel', ARGV[at + 3],
    'position', position, 'frame', string.sub(ARGV[at + 2], 1, -2) .. placed)
  if type(added) == 'table' and added.err then live = 0 end
end
local where = string.format('%d', first) .. ':' .. table.concat(offsets, ',') .. ':' .. in_flight
-- The key last: a script that failed half-way (a wrongly typed key) must not leave it answering repeats.
if ARGV[5] ~= '0' then
  local answer = string.sub(ARGV[8], 1, -2)
  if ARGV[5] == '1' then
    answer = answer .. ',"offset":' .. offsets[1] .. '}'
  else
    answer = answer .. ',"offsets":[' .. table.concat(offsets, ',') .. ']}'
  end
  redis.call('SET', KEYS[5], ARGV[7] .. ':' .. answer, 'EX', tonumber(ARGV[6]))
end
return finish('ok:' .. live .. ':' .. where)
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


class PositionsUnseeded(Exception):
    """Nothing was queued: the position counters are not seeded from the database (relay.broker.positions)."""


def _place(records: Sequence[Record], outcome: str) -> int:
    """Set each record's ``offset`` and ``position`` from a write's outcome; return the records in flight.

    The outcome is ``ok:<live>:<first>:<offsets>:<in flight>``.
    """
    _ok, _live, first, offsets, in_flight = outcome.split(":")
    assign(records, int(first), offsets.split(","))
    return int(in_flight)


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

    After a write that accepted records, ``send`` sends their task messages:
    before the write returns, or with ``gather_seconds`` from a thread that
    follows the load (relay.broker.sender). Without ``send``, as in tools
    that only publish live frames, the records wait in the pending set until
    a worker's reconciler sends them.
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
        gather_seconds: float = 0.0,
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
        # With gather_seconds, task messages leave from a thread of their own, following the load
        # (relay.broker.sender); without, each write's records are sent before it returns.
        gathers = send is not None and gather_seconds > 0
        self._sender = GatheringSender(send, gather_seconds, message_max_bytes) if gathers else None
        self.pending_set, self.pending_records = pending_keys(queue)
        self._counters = Positions(client, queue)
        self.group_commit = GroupCommit(self.write, max_bytes=message_max_bytes) if group_commit else None

    def enqueue(self, records: Sequence[Record], answer: dict, idempotency: Idempotency | None = None) -> Enqueued:
        """Queue ``records`` durably and publish them live (best effort), in one atomic write.

        Each record gets its ``offset`` and ``position`` (set in the dicts
        given), and so does the answer: ``offset`` for one message,
        ``offsets`` (in input order) for a batch, told apart by the answer's
        ``ids``. Raises ``redis.RedisError`` or :class:`QueueBusy` when
        nothing was queued, :class:`PositionsUnseeded` when no worker has
        seeded the counters yet, and :class:`IdempotencyKeyReused` when the
        key was used for another body. A failed live publish is reported in
        the result.
        """
        kind = "2" if "ids" in answer else "1"
        if idempotency is not None:
            outcome = self._run(records, idempotency, answer, kind=kind)
            if outcome == "reused":
                raise IdempotencyKeyReused(idempotency.key)
            if outcome.startswith("repeat:"):
                return Enqueued(orjson.loads(outcome[len("repeat:") :]), repeated=True)
            live = outcome.startswith("ok:1")
        elif self.group_commit is not None and self.group_commit.takes(records):
            live = self.group_commit.submit(records)
        else:
            live = self.write(records)
        offsets = [record["offset"] for record in records]
        placed = {"offsets": offsets} if kind == "2" else {"offset": offsets[0]}
        return Enqueued({**answer, **placed}, live_published=live)

    def write(self, records: Sequence[Record], fence: str | None = None) -> bool:
        """Queue ``records`` and publish their frames in one fenced write; return whether live publish worked.

        Sets each record's ``offset`` and ``position``. Raises
        ``redis.RedisError`` when nothing was queued. ``fence`` names the
        write's fence key (a fresh one by default).
        """
        return self._run(records, None, None, fence).startswith("ok:1")

    def _run(
        self,
        records: Sequence[Record],
        idempotency: Idempotency | None,
        answer: dict | None,
        fence: str | None = None,
        kind: str = "0",
    ) -> str:
        fence = fence or self.new_fence()
        args: list[bytes | str | int | float] = [
            FENCE_SECONDS,
            time.time(),
            self.window,
            len(records),
            kind if idempotency else "0",
            self.idempotency_ttl,
            idempotency.fingerprint if idempotency else "",
            orjson.dumps(answer) if idempotency else "",
        ]
        for record in records:
            args += [record["id"], orjson.dumps(record), live_frame(record), record_channel(record)]
        keys = [fence, self.pending_set, self.pending_records, self.stream]
        keys += [
            idempotency.key if idempotency else unused_key(self.queue),
            self._counters.counters,
            self._counters.pending,
        ]
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
        if outcome == "unseeded":
            raise PositionsUnseeded("no worker has seeded the position counters from the database yet")
        if not outcome.startswith(("ok:", "repeat:", "reused")):  # "aborted": settling fenced it off
            raise redis.ConnectionError(f"the write did not run ({outcome})")
        if outcome.startswith("ok:"):
            in_flight = _place(records, outcome)
            if self._sender is not None:
                self._sender(records, in_flight)
            elif self.send is not None:
                send_or_leave_pending(self.send, records)  # a failure leaves them to the pending set
        return outcome

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

    def ready(self) -> str | None:
        """Why nothing can be accepted now, as an error code: ``redis_unavailable``, ``positions_unseeded``; or None."""
        try:
            seeded = self._counters.seeded()
        except redis.RedisError:
            return "redis_unavailable"
        return None if seeded else "positions_unseeded"
