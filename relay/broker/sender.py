"""The send that follows the load: at once when nothing is in flight, gathered while something is.

Accepted records are already safe when they get here (they are in the
pending set and the 202 does not wait for the send), so the sender is free
to choose *when* their task message leaves. Two costs pull apart: a task
message per record makes the worker pay its per-task cost (Celery's
bookkeeping, one transaction and its commit) for every record, while a fixed
wait before each send makes every lone message that much later.

So the wait follows the load, as Nagle's algorithm and Kafka's producer
batching do:

* **Nothing in flight** (no other accepted record is waiting to be stored,
  as the accept script counts them): the records leave at once.
* **Something in flight** (the worker is storing earlier records, or
  another API process is gathering): sending now would only queue a small
  task behind them, so the records gather, from the first of them, for
  ``per_record_seconds`` per record in flight (about what one record of a
  small task costs the worker to store, so a record that would queue
  behind N others waits about as long as they take anyway), at most
  ``gather_seconds``, or until they fill one task message (``max_bytes``),
  whichever comes first. Behind one or two records that is a few
  milliseconds; behind a backlog, the whole bound, and tasks as large as
  the load makes them.
* **A send in flight** (this process's previous send has not returned):
  whatever arrives meanwhile leaves in the next send.

So at a low rate a message reaches the worker at once; under load, tasks
grow with the load and the worker does less per message. The send runs on
one thread (a greenlet under gevent) per process; a failed send is logged
and leaves the records to the pending set (:func:`send_or_leave_pending`),
whose reconciler sends them again. A record still waiting here when the
process dies is only late, for the same reason. At exit the buffer is sent.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Sequence

from relay.broker.contract import DEFAULT_MESSAGE_MAX_BYTES, Record
from relay.broker.pending import send_or_leave_pending

# How long a record waits per record in flight ahead of it: about the worker's wall time per record of
# a small task (a transaction and Celery's per-task cost, shared by its few records). Measured against
# 2 ms (with a 50 ms bound) on the machine of docs/performance.md: at 150 POST/s both kept POST -> stored
# within p50 30 ms / p99 100 ms, and 5 ms cost 17% less CPU per stored message (fewer, larger tasks).
PER_RECORD_SECONDS = 0.005


class GatheringSender:
    """Sends accepted records from a thread of its own, gathering them while something is in flight."""

    def __init__(
        self,
        send: Callable[[Sequence[Record]], object],
        gather_seconds: float,
        max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        per_record_seconds: float = PER_RECORD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.send = send
        self.gather_seconds = gather_seconds
        self.per_record_seconds = per_record_seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self._buffer: list[Record] = []
        self._bytes = 0
        self._due = 0.0  # when the buffer leaves at the latest (clock time)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        atexit.register(self.flush)

    def __call__(self, records: Sequence[Record], in_flight: int = 0) -> None:
        """Hand over accepted ``records``; ``in_flight``: other accepted records not yet stored."""
        with self._wake:
            if self._thread is None or self._pid != os.getpid():  # first use, or first use after a fork
                self._pid, self._buffer, self._bytes = os.getpid(), [], 0
                self._thread = threading.Thread(target=self._run, name="task-sender", daemon=True)
                self._thread.start()
            if not self._buffer:
                self._due = self.clock() + min(self.gather_seconds, in_flight * self.per_record_seconds)
            self._buffer.extend(records)
            self._bytes += sum(len(r["payload"]) for r in records)
            self._wake.notify()

    def flush(self) -> None:
        """Send whatever waits now (at exit; the thread does it otherwise)."""
        with self._wake:
            taken, self._buffer, self._bytes = self._buffer, [], 0
        if taken:
            send_or_leave_pending(self.send, taken)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._buffer or (self._bytes < self.max_bytes and self.clock() < self._due):
                    self._wake.wait(None if not self._buffer else max(0.0, self._due - self.clock()))
            self.flush()
