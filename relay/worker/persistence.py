"""Storing a batch of records whatever goes wrong: retries, outages, poison messages.

The worker hands :meth:`Persister.persist` the records of one task message.
It never raises for a database problem, because the caller acknowledges the
task message when it returns (see ``tasks.py``):

* the records are written in chunks of ``chunk_size``, one transaction each;
* a failed write is classified by ``about_the_record(exception)``, which
  knows the drivers' error codes (``relay/db_errors.py``): only an error the
  database reports about the rows written (a constraint, a trigger, a value
  that does not fit) can make records poison. Every other error, known or
  not, is an outage: the database is unreachable (``database_up`` fails), or
  it answers but cannot write (disk full, read-only, no privilege, locked,
  deadlocked);
* an outage is waited out, retrying the write itself with exponential
  backoff (capped at ``max_backoff``, one WARNING line per attempt) for as
  long as it takes: it delays messages, it never loses them, and it never
  counts towards ``attempts``. A database that answers ``SELECT 1`` while its
  disk is full is still an outage: dead-letters are decided by what the
  database says about a record, not by whether it answers;
* a write failing with an error about the records is retried (``attempts``
  times in all, with backoff); if it keeps failing, the data is the problem:
  the chunk is split in halves until the records that fail on their own are
  found, and those go to the dead-letter callback with the error, while
  every other record is stored. Isolation does not sleep: each half is
  tried once (retrying a rejected record only repeats the rejection),
  except that an outage met meanwhile is waited out as above;
* ``budget`` bounds the time one call spends, outages aside: when
  it runs out between two steps, the records not yet handled are returned
  in ``Outcome.deferred`` for the caller to queue again. The worker derives
  it from the visibility timeout, so isolating a batch full of poison never
  outlives its task messages' visibility (they would be redelivered and
  handled twice) and never holds up other messages for long.

No Celery, Redis, Flask or database driver here: the operations and the
classifier are passed in, so this is tested on its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
Record = dict[str, str]


@dataclass
class Outcome:
    """What one ``persist`` call did; ``deferred`` are the records it ran out of time for."""

    stored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    deferred: list[Record] = field(default_factory=list)


class Persister:
    """Writes records with retries; see the module docstring for the policy."""

    def __init__(
        self,
        save: Callable[[Sequence[Record]], int],
        database_up: Callable[[], bool],
        dead_letter: Callable[[Record, str], object],
        *,
        about_the_record: Callable[[Exception], bool],
        attempts: int = 3,
        chunk_size: int = 1000,
        first_backoff: float = 0.05,
        max_backoff: float = 10.0,
        budget: float = math.inf,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.save = save
        self.database_up = database_up
        self.dead_letter = dead_letter
        self.about_the_record = about_the_record
        self.attempts = attempts
        self.chunk_size = chunk_size
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.budget = budget
        self.sleep = sleep
        self.clock = clock

    def persist(self, records: Sequence[Record]) -> Outcome:
        """Store ``records`` exactly once, dead-letter the ones the database rejects, defer the rest past the budget."""
        outcome = Outcome()
        deadline = self.clock() + self.budget
        chunks = [records[start : start + self.chunk_size] for start in range(0, len(records), self.chunk_size)]
        for index, chunk in enumerate(chunks):
            if index and self.clock() >= deadline:
                outcome.deferred += [record for rest in chunks[index:] for record in rest]
                break
            self._chunk(chunk, outcome, deadline)
        return outcome

    def _chunk(self, chunk: Sequence[Record], outcome: Outcome, deadline: float) -> None:
        failures = 0
        backoff = self.first_backoff
        while (error := self._write(chunk, outcome)) is not None:
            failures += 1
            if failures >= self.attempts:
                self._isolate(chunk, error, outcome, deadline)
                return
            log.warning("write of %d record(s) failed (%s); retry %d", len(chunk), error, failures)
            self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _isolate(self, chunk: Sequence[Record], error: str, outcome: Outcome, deadline: float) -> None:
        """Split ``chunk`` (which keeps failing) into stored and dead-lettered records, trying each part once.

        Past ``deadline`` the parts not yet tried are deferred, but only once
        this call has stored or dead-lettered something, so that a deferred
        record always comes back to less work than it left.
        """
        log.warning("write of %d record(s) failed %d times (%s); isolating", len(chunk), self.attempts, error)
        if len(chunk) == 1:
            self._dead_letter(chunk[0], error, outcome)
            return
        parts: deque[Sequence[Record]] = deque(_halves(chunk))
        progressed = False
        while parts:
            if progressed and self.clock() >= deadline:
                outcome.deferred += [record for part in parts for record in part]
                log.warning("isolation ran out of time; deferring %d record(s)", len(outcome.deferred))
                return
            part = parts.popleft()
            if (error := self._write(part, outcome)) is None:
                progressed = True
            elif len(part) == 1:
                self._dead_letter(part[0], error, outcome)
                progressed = True
            else:
                parts.extendleft(reversed(_halves(part)))

    def _write(self, chunk: Sequence[Record], outcome: Outcome) -> str | None:
        """Write ``chunk``, waiting out any outage; return the error the database gave about its records, or None."""
        backoff = self.first_backoff
        while True:
            try:
                outcome.stored += self.save(chunk)
                return None
            except Exception as exc:
                outcome.retries += 1
                # The driver's own message: SQLAlchemy's str() would add the SQL and every row's payload.
                error = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
                about_the_record = self._about_the_record(exc)
            up = self._up()
            if about_the_record and up:
                return error
            # Never the records' fault: retrying the write is the only way to learn the database writes again
            # (a full disk answers SELECT 1).
            problem = "database cannot write" if up else "database unreachable"
            log.warning("%s (%s); waiting %.2fs with %d record(s)", problem, error, backoff, len(chunk))
            self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _dead_letter(self, record: Record, error: str, outcome: Outcome) -> None:
        log.error(
            "dead-lettering message %s: %s",
            record.get("id"),
            error,
            extra={"message_id": record.get("id"), "error": error},
        )
        if self.dead_letter(record, error) is not False:  # False: already dead-lettered (a redelivery)
            outcome.dead_lettered += 1

    def _up(self) -> bool:
        try:
            return self.database_up()
        except Exception:
            return False

    def _about_the_record(self, exc: Exception) -> bool:
        try:
            return self.about_the_record(exc)
        except Exception:  # a classifier that cannot tell does not make a record poison
            log.exception("could not classify %r", exc)
            return False


def _halves(records: Sequence[Record]) -> tuple[Sequence[Record], Sequence[Record]]:
    middle = len(records) // 2
    return records[:middle], records[middle:]
