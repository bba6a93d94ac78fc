"""Group commit: the concurrent requests of one process share one queue write."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from relay.broker.contract import DEFAULT_MESSAGE_MAX_BYTES


class QueueBusy(Exception):
    """A request waited too long for its turn to be written; none of it was written."""


class _Waiter:
    """One request's records waiting in a group commit (compared by identity)."""

    __slots__ = ("done", "error", "lead", "live_ok", "records")

    def __init__(self, records: Sequence[dict[str, str]]) -> None:
        self.records = records
        self.done = threading.Event()  # set when its write is over, or when it is to lead the next one
        self.lead = False
        self.live_ok = False
        self.error: BaseException | None = None


class GroupCommit:
    """Coalesce the concurrent requests of one process into one queue write.

    Leader and followers, with no thread of its own: a request that arrives
    while no write is in flight writes its records itself, at once. Requests
    arriving while a write is in flight wait; when it ends, the writer hands
    the lead to the oldest of them, which writes everything waiting in one
    round trip. So a lone request pays no hand-off to another thread, and
    batches grow with load. A request still answers only after its own
    records are in Redis, so a 202 keeps its meaning.

    A request that waits ``wait_seconds`` without being taken is withdrawn
    (:class:`QueueBusy`: nothing of it was written, so a 503 is the truth).
    One already taken waits for its write, which the Redis timeouts and
    :meth:`relay.broker.producer.Producer.settle` bound, so it never answers before knowing.
    The lead is handed on whatever ends a write (an exception included), so
    one failed request never leaves the others waiting.
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
        self._lock = threading.Lock()
        self._writing = False

    def takes(self, records: Sequence[dict[str, str]]) -> bool:
        """Tell whether ``records`` are small enough to share a write; big ones gain nothing by waiting."""
        return len(records) * 2 <= self.max_records and sum(len(r["payload"]) for r in records) * 2 <= self.max_bytes

    def submit(self, records: Sequence[dict[str, str]]) -> bool:
        """Write ``records`` with whatever else is pending; return whether live publish worked, or raise."""
        waiter = _Waiter(records)
        with self._lock:
            self._pending.append(waiter)
            waiter.lead = not self._writing
            self._writing = True
        if not waiter.lead and not waiter.done.wait(self._wait_seconds):
            with self._lock:
                if not waiter.lead and any(w is waiter for w in self._pending):
                    self._pending = [w for w in self._pending if w is not waiter]
                    raise QueueBusy(f"not written within {self._wait_seconds:g} s")
            waiter.done.wait()  # taken (its write settles in bounded time), or just made the leader
        if waiter.lead:
            self._write_pending()
        if waiter.error is not None:
            raise waiter.error
        return waiter.live_ok

    def _write_pending(self) -> None:
        """Write the oldest pending requests (the leader's among them), then hand the lead on."""
        with self._lock:
            taken, count = [], 0
            while self._pending and (not taken or count + len(self._pending[0].records) <= self.max_records):
                waiter = self._pending.pop(0)
                taken.append(waiter)
                count += len(waiter.records)
        try:
            live_ok = self._write([record for waiter in taken for record in waiter.records])
        except BaseException as exc:  # handed to every request of this write
            for waiter in taken:
                waiter.error = exc
        else:
            for waiter in taken:
                waiter.live_ok = live_ok
        finally:
            with self._lock:
                if self._pending:
                    self._pending[0].lead = True
                    self._pending[0].done.set()
                else:
                    self._writing = False
            for waiter in taken:
                waiter.done.set()
