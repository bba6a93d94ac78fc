"""Storing a batch of records whatever goes wrong: retries, outages, poison messages.

The worker hands :meth:`Persister.persist` the records of one task message.
It never raises for a database problem, because the caller acknowledges the
task message when it returns (see ``tasks.py``):

* the records are written in chunks of ``chunk_size``, one transaction each;
* a failed chunk is retried with exponential backoff;
* while the database is unreachable the persister waits (backoff capped at
  ``max_backoff``) for as long as it takes: an outage delays messages, it
  never loses them;
* when a chunk keeps failing with the database up (``attempts`` times), the
  data is the problem: the chunk is split in halves until the records that
  fail on their own are found, and those go to the dead-letter callback
  with the error, while every other record is stored. Isolation does not
  sleep: each half is tried once (retrying a rejected record only repeats
  the rejection), except that a database outage met meanwhile is waited
  out as above;
* ``budget`` bounds the time one call spends once the database is up: when
  it runs out between two steps, the records not yet handled are returned
  in ``Outcome.deferred`` for the caller to queue again. The worker derives
  it from the visibility timeout, so isolating a batch full of poison never
  outlives its task messages' visibility (they would be redelivered and
  handled twice) and never holds up other messages for long.

No Celery, Redis or Flask here: the three operations are passed in, so this
is tested on its own.
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
        while (error := self._save(chunk, outcome)) is not None:
            if not self._up():
                log.warning("database unreachable (%s); waiting %.2fs with %d record(s)", error, backoff, len(chunk))
                failures = 0
            else:
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
            if (error := self._save(part, outcome)) is None:
                progressed = True
            elif not self._up():
                self._wait_for_database(error, len(part))
                parts.appendleft(part)
            elif len(part) == 1:
                # Once more at once: a deadlock or a connection lost with the database still up passes now;
                # a record the database rejects fails again, and only then is dead-lettered.
                if (error := self._save(part, outcome)) is None:
                    progressed = True
                elif not self._up():
                    self._wait_for_database(error, 1)
                    parts.appendleft(part)
                else:
                    self._dead_letter(part[0], error, outcome)
                    progressed = True
            else:
                parts.extendleft(reversed(_halves(part)))

    def _save(self, chunk: Sequence[Record], outcome: Outcome) -> str | None:
        """Write ``chunk`` once; return the error, or None once it is stored."""
        try:
            outcome.stored += self.save(chunk)
            return None
        except Exception as exc:
            outcome.retries += 1
            # The driver's own message: SQLAlchemy's str() would add the SQL and every row's payload.
            return f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"

    def _wait_for_database(self, error: str, count: int) -> None:
        backoff = self.first_backoff
        while not self._up():
            log.warning("database unreachable (%s); waiting %.2fs with %d record(s)", error, backoff, count)
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


def _halves(records: Sequence[Record]) -> tuple[Sequence[Record], Sequence[Record]]:
    middle = len(records) // 2
    return records[:middle], records[middle:]
