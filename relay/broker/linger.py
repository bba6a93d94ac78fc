"""Linger: the records of many writes leave in one task message, a few milliseconds later.

At a low, steady rate the requests of an ingestion API process rarely
overlap, so the group commit (relay.broker.group_commit) writes them one by
one, and one task message per request would cost the worker a task (and
Celery its per-message bookkeeping) for every record. The records are
already accepted when they get here (they are in the pending set, and the
202 does not wait for the send), so the sender may wait: it gathers what
arrives for ``seconds`` after the first record and sends it all at once,
from one thread (a greenlet under gevent) per process.

A record still waiting here when the process dies is only late: its
pending entry gets it sent by a worker's reconciler. At exit the buffer is
sent.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Sequence

from relay.broker.contract import Record
from relay.broker.pending import send_or_leave_pending


class Linger:
    """A ``send`` that gathers records for ``seconds`` before passing them on in one call."""

    def __init__(self, send: Callable[[Sequence[Record]], object], seconds: float) -> None:
        self.send = send
        self.seconds = seconds
        self._buffer: list[Record] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        atexit.register(self.flush)

    def __call__(self, records: Sequence[Record]) -> None:
        with self._wake:
            if self._thread is None or self._pid != os.getpid():  # first use, or first use after a fork
                self._pid, self._buffer = os.getpid(), []
                self._thread = threading.Thread(target=self._run, name="send-linger", daemon=True)
                self._thread.start()
            self._buffer.extend(records)
            self._wake.notify()

    def flush(self) -> None:
        """Send whatever waits now (at exit; the thread does it otherwise)."""
        with self._wake:
            taken, self._buffer = self._buffer, []
        if taken:
            send_or_leave_pending(self.send, taken)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._buffer:
                    self._wake.wait()
            time.sleep(self.seconds)  # let the records of other requests join
            self.flush()
