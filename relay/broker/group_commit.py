"""Group commit: the concurrent requests of one process share one queue write."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from relay.broker.contract import DEFAULT_MESSAGE_MAX_BYTES


class QueueBusy(Exception):
    """A request waited too long for its turn to be written; none of it was written."""


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
    :meth:`relay.broker.producer.Producer.settle` bound, so it never answers before knowing.
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
