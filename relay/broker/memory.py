"""Redis' memory as a 202 needs it: room left for the workers, and nothing ever evicted.

A 202 promises that the message will be stored, and only the workers free
Redis' memory (they remove what they have stored). Two states of Redis break
that promise, so the ingestion API refuses messages (503) while either holds:

* an evicting ``maxmemory-policy`` (anything but ``noeviction``): a full
  Redis would drop pending records, task messages, kombu's queue binding,
  fences or idempotency keys, silently. Code ``redis_evicting``, until the
  policy is ``noeviction`` again (the worker's ``/healthz`` says so too).
* used memory at or above ``REDIS_MEMORY_HIGH_WATER`` of ``maxmemory``: the
  rest is the workers' room. A worker writes to Redis to drain it: kombu's
  bookkeeping copy of every task message it holds (up to
  ``WORKER_PREFETCH_BYTES`` per pool process, each written after its pop from
  the queue), its locks, the reconciler's re-sends (up to 1,000 records per
  round), dead letters. At ``maxmemory`` Redis refuses those writes, so the
  API must stop short of it. Code ``queue_full``, until the workers have
  drained the queue below the mark.

:class:`MemoryWatch` reads ``INFO memory`` (allowed on managed Redis where
``CONFIG`` is not) at most once per interval per process, so the request path
does not pay a round trip per request; the decision itself,
:func:`refusal`, is a plain function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

NO_EVICTION = "noeviction"
# Within this share of maxmemory below the high-water mark, memory is read 20 times as often: one
# interval of fast ingestion (many MB a second) must not carry Redis from below the mark past maxmemory.
NEAR = 0.1


@dataclass(frozen=True)
class Memory:
    """What ``INFO memory`` says: bytes used, ``maxmemory`` (0: no limit) and ``maxmemory-policy``."""

    used: int
    limit: int
    policy: str

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Memory:
        """Read the fields of redis-py's parsed ``INFO memory`` answer."""
        return cls(int(info["used_memory"]), int(info["maxmemory"]), str(info["maxmemory_policy"]))


@dataclass(frozen=True)
class Refusal:
    """Why no message may be accepted now: an error code and a sentence for the client and the log."""

    code: str
    message: str


def evicting(memory: Memory) -> Refusal | None:
    """The refusal for an evicting ``maxmemory-policy``; None under ``noeviction``."""
    if memory.policy == NO_EVICTION:
        return None
    return Refusal(
        "redis_evicting",
        f"Redis' maxmemory-policy is {memory.policy}: when full it would drop queued messages. "
        "Messages are refused until maxmemory-policy is noeviction.",
    )


def refusal(memory: Memory, high_water: float) -> Refusal | None:
    """Why the ingestion API must not accept messages with Redis in this state; None when it may."""
    if (evicts := evicting(memory)) is not None:
        return evicts
    if memory.limit and memory.used >= memory.limit * high_water:
        return Refusal(
            "queue_full",
            f"Redis is {memory.used / memory.limit:.0%} full, at or over REDIS_MEMORY_HIGH_WATER ({high_water:g}) "
            "of its maxmemory: messages are refused until the workers have drained the queue; retry after "
            "Retry-After seconds.",
        )
    return None


class MemoryWatch:
    """The current :func:`refusal`, from an ``INFO memory`` read at most once per ``interval`` seconds.

    Within ``NEAR`` of the mark (and above it) it reads every ``interval / 20``
    instead, so an API process notices the mark within 50 ms of filling
    towards it, and accepts again as soon as the workers have drained below it.

    ``read`` returns the parsed ``INFO memory`` (``redis.Redis.info("memory")``).
    A read that fails refuses nothing: the write that follows meets the
    same Redis and answers for itself, and a Redis that does not answer
    cannot have changed its policy. Changes are logged once per process.
    """

    def __init__(
        self,
        read: Callable[[], Mapping[str, Any]],
        high_water: float,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < high_water <= 1:
            raise ValueError(f"REDIS_MEMORY_HIGH_WATER must be above 0 and at most 1, got {high_water!r}")
        self.read = read
        self.high_water = high_water
        self.interval = interval
        self.clock = clock
        self._due = float("-inf")
        self._current: Refusal | None = None

    def refusal(self) -> Refusal | None:
        """Why messages must be refused now (read again once ``interval`` has passed); None: accept."""
        now = self.clock()
        if now < self._due:
            return self._current
        self._due = now + self.interval  # before the read: concurrent requests keep the cached answer
        try:
            memory = Memory.from_info(self.read())
        except Exception as exc:  # Redis away or slow: the write answers for itself
            log.debug("reading Redis' memory failed (%s)", exc)
            self._current = None
            return None
        if memory.limit and memory.used >= memory.limit * (self.high_water - NEAR):
            self._due = now + self.interval / 20
        found = refusal(memory, self.high_water)
        self._log_change(self._current, found)
        self._current = found
        return found

    @staticmethod
    def _log_change(before: Refusal | None, after: Refusal | None) -> None:
        if after == before or (before and after and before.code == after.code):
            return
        if after is None:
            log.warning("accepting messages again: Redis has room and does not evict (was %s)", before.code)
        elif after.code == "redis_evicting":
            log.error("refusing messages: %s", after.message)
        else:
            log.warning("refusing messages: %s", after.message)
