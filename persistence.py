"""Storing a batch of records whatever goes wrong: retries, outages, poison messages.

The worker hands :meth:`Persister.persist` every record of a flushed batch.
It never raises for a database problem, because the caller acknowledges the
batch's task messages when it returns (see ``tasks.py``):

* the records are written in chunks of ``chunk_size``, one transaction each;
* a failed chunk is retried with exponential backoff;
* while the database is unreachable the persister waits (backoff capped at
  ``max_backoff``) for as long as it takes: an outage delays messages, it
  never loses them;
* when a chunk keeps failing with the database up (``attempts`` times), the
  data is the problem: the chunk is split in halves until the records that
  fail on their own are found, and those go to the dead-letter callback
  with the error, while every other record is stored.

No Celery, Redis or Flask here: the three operations are passed in, so this
is tested on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)
Record = dict[str, str]


@dataclass
class Outcome:
    """What one ``persist`` call did."""

    stored: int = 0
    dead_lettered: int = 0
    retries: int = 0


class Persister:
    """Writes records with retries; see the module docstring for the policy."""

    def __init__(
        self,
        save: Callable[[Sequence[Record]], int],
        database_up: Callable[[], bool],
        dead_letter: Callable[[Record, str], None],
        *,
        attempts: int = 3,
        chunk_size: int = 1000,
        first_backoff: float = 0.05,
        max_backoff: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.save = save
        self.database_up = database_up
        self.dead_letter = dead_letter
        self.attempts = attempts
        self.chunk_size = chunk_size
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.sleep = sleep

    def persist(self, records: Sequence[Record]) -> Outcome:
        """Store ``records`` exactly once, or dead-letter the ones the database rejects."""
        outcome = Outcome()
        for start in range(0, len(records), self.chunk_size):
            self._chunk(records[start : start + self.chunk_size], outcome)
        return outcome

    def _chunk(self, chunk: Sequence[Record], outcome: Outcome) -> None:
        failures = 0
        backoff = self.first_backoff
        while True:
            try:
                outcome.stored += self.save(chunk)
                return
            except Exception as exc:
                # The driver's own message: SQLAlchemy's str() would add the SQL and every row's payload.
                error = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
            outcome.retries += 1
            if not self._up():
                log.warning("database unreachable (%s); waiting %.2fs with %d record(s)", error, backoff, len(chunk))
                failures = 0
            else:
                failures += 1
                if failures >= self.attempts:
                    break
                log.warning("write of %d record(s) failed (%s); retry %d", len(chunk), error, failures)
            self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        if len(chunk) == 1:
            log.error(
                "dead-lettering message %s after %d failed writes: %s",
                chunk[0].get("id"),
                failures,
                error,
                extra={"message_id": chunk[0].get("id"), "error": error},
            )
            self.dead_letter(chunk[0], error)
            outcome.dead_lettered += 1
            return
        middle = len(chunk) // 2
        self._chunk(chunk[:middle], outcome)
        self._chunk(chunk[middle:], outcome)

    def _up(self) -> bool:
        try:
            return self.database_up()
        except Exception:
            return False
