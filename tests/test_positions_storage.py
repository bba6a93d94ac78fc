"""Positions in storage (issue 22), on real SQLite and MariaDB: no hot row, exactly once, exact channel counts.

Saves of one channel commit in parallel; a duplicate saved by two sessions
at once is stored once; the channel deltas fold into ``channels`` without
changing any answer; the position floors outlive retention; a follower that
lists below the watermark skips nothing, whatever order rows are saved in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url

from relay import storage
from relay.records import format_time, utc_now
from tests.helpers import clear_database, wait_until
from tests.test_storage import Accepting, in_channel, unplaced_in


class Call(threading.Thread):
    """``fn()`` in a thread and an app context (so a connection) of its own; its result or error kept.

    Under :func:`commits_held`, a call made with ``hold=True`` stops at its
    COMMIT (its rows inserted, their locks held) until ``release`` is set.
    """

    def __init__(self, app: Flask, fn: Callable[[], Any], hold: bool = False) -> None:
        super().__init__(daemon=True)
        self.app, self.fn = app, fn
        self.at_commit, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        with self.app.app_context():
            try:
                self.result = self.fn()
            except BaseException as exc:  # surfaced by the test
                self.error = exc
            finally:
                storage.db.session.remove()


@contextlib.contextmanager
def commits_held(app: Flask) -> Iterator[None]:
    """While inside, each :class:`Call` on ``app``'s engine waits at COMMIT until its ``release`` is set."""
    with app.app_context():
        engine = storage.db.engine

    def before_commit(_conn: sa.Connection) -> None:
        call = threading.current_thread()
        if isinstance(call, Call):
            call.at_commit.set()
            call.release.wait(60)

    sa.event.listen(engine, "commit", before_commit)
    try:
        yield
    finally:
        sa.event.remove(engine, "commit", before_commit)


def waiting(observer: sa.Engine, statement: str) -> bool:
    """Whether a statement starting with ``statement`` has run for half a second on ``observer``'s database.

    The statements these tests hold back take milliseconds unless they wait for a row lock. (MariaDB's
    ``INNODB_TRX`` does not reliably list a transaction that waits at its first write.)
    """
    with observer.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                    "WHERE DB = :db AND INFO LIKE :statement AND TIME_MS >= 500"
                ),
                {"db": observer.url.database, "statement": statement + "%"},
            ).scalar_one()
        )


@pytest.fixture
def mysql_app(mysql_url: str) -> Iterator[Flask]:
    """The worker's database app on the session's MariaDB database, emptied."""
    clear_database(mysql_url)
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": mysql_url, "TESTING": True})
    yield app
    with app.app_context():
        storage.db.engine.dispose()


@pytest.fixture
def observer(mysql_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(make_url(mysql_url))
    yield engine
    engine.dispose()


def fold(limit: int = 10_000) -> int:
    """Fold the deltas as the worker's thread does, in a transaction of its own (so on MariaDB at READ COMMITTED)."""
    storage.db.session.rollback()
    return storage.fold_channel_deltas(limit)


def counts(rows: list[sa.Row]) -> dict[str, int]:
    return {row.name: int(row.messages) for row in rows}


@pytest.mark.mysql
def test_saves_of_one_channel_commit_in_parallel_on_mariadb(mysql_app: Flask, observer: sa.Engine) -> None:
    """No hot row: while a save of channel a holds its transaction open (rows and delta inserted), saves of
    the same channel above and below its positions complete without waiting, and so does one beside a fold.

    Before positions, every save took the ``message_sequence`` row: the second one waited here.
    """
    below, held_rows, above, later = (in_channel("a", 3) for _ in range(4))
    held = Call(mysql_app, lambda: storage.save_messages(held_rows), hold=True)
    others = [Call(mysql_app, lambda batch=batch: storage.save_messages(batch)) for batch in (above, below)]
    folding = Call(mysql_app, storage.fold_channel_deltas)
    beside_fold = Call(mysql_app, lambda: storage.save_messages(later))
    with commits_held(mysql_app):
        held.start()
        assert held.at_commit.wait(10), "the held save never reached its COMMIT"
        try:
            started = time.monotonic()
            for call in others:
                call.start()
                call.join(5)
            took = time.monotonic() - started
            waited = [call for call in others if call.is_alive()]
            # A fold reads the deltas with a locking read: it waits for the held save's delta, and saves go on.
            folding.start()
            wait_until(
                lambda: waiting(observer, "SELECT channel_deltas.id") or not folding.is_alive(),
                timeout=20,
                what="the fold under way",
            )
            assert folding.is_alive(), "the fold did not wait for the held save's delta"
            beside_fold.start()
            beside_fold.join(5)
            waited += [beside_fold] if beside_fold.is_alive() else []
        finally:
            held.release.set()
            for call in (held, *others, folding, beside_fold):
                if call.ident is not None:  # started
                    call.join(60)
    assert not waited, "a save of channel a waited for another save's open transaction"
    assert took < 5
    assert [call.error for call in (held, *others, folding, beside_fold)] == [None] * 5
    assert [call.result for call in (held, *others, beside_fold)] == [3, 3, 3, 3]
    with mysql_app.app_context():
        rows, _ = storage.list_messages(None, 100, channel="a")
        assert [r.id for r in rows] == [r["id"] for r in below + held_rows + above + later]
        assert counts(storage.list_channels(None, 10)[0]) == {"a": 12}
        fold()
        assert counts(storage.list_channels(None, 10)[0]) == {"a": 12}


@pytest.mark.mysql
@pytest.mark.parametrize("new", [0, 2], ids=["same records", "plus two new"])
def test_a_duplicate_saved_by_two_sessions_at_once_is_stored_once_on_mariadb(
    mysql_app: Flask, observer: sa.Engine, new: int
) -> None:
    """The first save holds its rows uncommitted; the second finds none of them stored, waits on the unique
    key, fails when the first commits, and saves again without them: each row stored once, counts exact."""
    batch = in_channel("a", 4) + in_channel("b", 2)
    more = in_channel("a", new)
    with commits_held(mysql_app):
        first = Call(mysql_app, lambda: storage.save_messages(batch), hold=True)
        first.start()
        assert first.at_commit.wait(10), "the first save never reached its COMMIT"
        second = Call(mysql_app, lambda: storage.save_messages(batch + more))
        try:
            second.start()
            wait_until(
                lambda: waiting(observer, "INSERT INTO messages") or not second.is_alive(),
                timeout=20,
                what="the second save waiting on the unique key",
            )
            assert second.is_alive(), f"the second save did not wait for the first: {second.result}, {second.error!r}"
        finally:
            first.release.set()
            first.join(30)
            second.join(30)
    assert (first.error, second.error) == (None, None)
    assert (first.result, second.result) == (6, new), "each row stored by exactly one save"
    with mysql_app.app_context():
        ids = list(storage.db.session.execute(sa.select(storage.Message.id)).scalars())
        assert sorted(ids) == sorted(r["id"] for r in batch + more)
        assert counts(storage.list_channels(None, 10)[0]) == {"a": 4 + new, "b": 2}
        fold()
        assert counts(storage.list_channels(None, 10)[0]) == {"a": 4 + new, "b": 2}
        assert storage.db.session.execute(sa.select(sa.func.count()).select_from(storage.ChannelDelta)).scalar() == 0


BASE = dt.datetime(2026, 12, 8, 9, 0, 0)


def stamped(batch: list[dict], clock: Callable[[dict], int]) -> list[dict]:
    """Set each record's ``received_at`` to ``clock(record)`` milliseconds after BASE."""
    for record in batch:
        record["received_at"] = format_time(BASE + dt.timedelta(milliseconds=clock(record)))
    return batch


# How ``received_at`` relates to positions. Each record is stamped by an ingestion API before the accept
# script gives its position, so records of several API processes reach Redis out of received_at order;
# a channel's ``last_message_at`` is the newest ``received_at`` among its messages, whatever their positions.
CLOCKS = {
    "received in position order": lambda record: record["position"],
    "received in reverse position order": lambda record: -record["position"],
}


def channels_table() -> dict[str, tuple[int, int, int, str]]:
    table = storage.Channel.__table__
    return {
        row.name: (row.messages, row.last_seq, row.last_offset, format_time(row.last_message_at))
        for row in storage.db.session.execute(sa.select(table))
    }


def listed_channels() -> list[tuple[str, int, int, str]]:
    rows, _ = storage.list_channels(None, 100)
    return [(r.name, int(r.messages), int(r.last_seq), format_time(r.last_message_at)) for r in rows]


def expectations(saved: list[dict]) -> tuple[list, dict, tuple]:
    """What ``list_channels``, the folded ``channels`` table and ``position_floors`` should say after ``saved``."""
    table = {}
    for name in sorted({r["channel"] for r in saved}):
        mine = [r for r in saved if r["channel"] == name]
        top = max(mine, key=lambda r: r["position"])
        table[name] = (len(mine), top["position"], top["offset"], max(r["received_at"] for r in mine))
    listing = [(name, count, seq, at) for name, (count, seq, _offset, at) in table.items()]
    floors = (max(r["position"] for r in saved), {name: value[2] for name, value in table.items()})
    return listing, table, floors


@pytest.mark.parametrize("clock", list(CLOCKS), ids=list(CLOCKS))
def test_folding_the_channel_deltas_changes_no_count_position_or_time(db_app: Flask, clock: str) -> None:
    """Six saves of two channels, folded part by part, then one more of an older offset: counts, highest
    position and offset, and the newest ``received_at`` stay what they were, in ``list_channels``,
    the folded table and the position floors."""
    saves = [in_channel("a", 2), in_channel("b", 1), in_channel("a", 1) + in_channel("b", 2), in_channel("a", 3)]
    # The newest (highest position) of channel a is saved, and folded, before its older neighbour.
    late, newest = in_channel("a", 2)
    saves = [stamped(batch, CLOCKS[clock]) for batch in [*saves, [newest], [late]]]
    saved: list[dict] = []
    with db_app.app_context():
        for batch in saves[:-1]:
            storage.save_messages(batch)
            saved += batch
        listing, table, floors = expectations(saved)
        assert listed_channels() == listing, "nothing folded"
        assert storage.position_floors() == floors
        assert fold(limit=2) == 2
        assert listed_channels() == listing, "partly folded"
        assert fold() == 4
        assert listed_channels() == listing, "folded"
        assert channels_table() == table
        assert storage.position_floors() == floors
        storage.save_messages(saves[-1])
        saved += saves[-1]
        listing, table, floors = expectations(saved)
        assert listed_channels() == listing, "an older offset saved after the newest was folded"
        assert fold() == 1
        assert fold() == 0
        assert listed_channels() == listing
        assert channels_table() == table
        assert storage.position_floors() == floors


def test_position_floors_keep_the_numbers_of_messages_retention_removed(db_app: Flask) -> None:
    """A channel whose messages all expired still holds its highest offset, and the highest position stays
    when no row is left: the counters seeded from them never give a stored number again."""
    with db_app.app_context():
        gone = in_channel("gone", 3)
        storage.save_messages(gone)
        time.sleep(0.01)
        cutoff = utc_now()
        time.sleep(0.01)
        kept = in_channel("kept", 2)
        storage.save_messages(kept)
        floors = (kept[-1]["position"], {"gone": gone[-1]["offset"], "kept": kept[-1]["offset"]})
        assert storage.position_floors() == floors, "from the deltas, before any fold"
        assert storage.remove_expired(cutoff, 100) == 3
        assert counts(storage.list_channels(None, 10)[0]) == {"gone": 0, "kept": 2}
        assert storage.position_floors() == floors
        assert storage.remove_expired(utc_now() + dt.timedelta(days=1), 100) == 2
        assert storage.list_messages(None, 10) == ([], False)
        assert storage.position_floors() == floors


@pytest.mark.parametrize("channel", [None, "a"], ids=["all channels", "one channel"])
def test_listing_below_the_watermark_stops_before_it(db_app: Flask, channel: str | None) -> None:
    batch = in_channel("a", 3) + in_channel("b", 1) + in_channel("a", 3)
    listed = [r for r in batch if channel in (None, r["channel"])]
    watermark = batch[4]["position"]
    below = [r["id"] for r in listed if r["position"] < watermark]
    with db_app.app_context():
        storage.save_messages(batch)
        rows, more = storage.list_messages(None, 10, channel=channel, below=watermark)
        assert ([r.id for r in rows], more) == (below, False), "nothing at or past the watermark"
        rows, more = storage.list_messages(None, 2, channel=channel, below=watermark)
        assert ([r.id for r in rows], more) == (below[:2], True)
        rows, more = storage.list_messages(None, 10, descending=True, channel=channel, below=watermark)
        assert ([r.id for r in rows], more) == (below[::-1], False), "newest first starts below it"
        rows, _ = storage.list_messages(None, 10, channel=channel, below=batch[0]["position"])
        assert rows == []


@pytest.mark.parametrize("channel", [None, "a"], ids=["all channels", "one channel"])
def test_a_follower_below_the_watermark_skips_no_row_saved_out_of_position_order(
    db_app: Flask, channel: str | None
) -> None:
    """Positions 1, 2, 3 accepted; 1 saved, then 3, then 2. The follower reads the watermark (the lowest
    unsaved position) before each page, as the list API does: it waits at 2, then gets 2 and 3, in order."""
    accepting = Accepting()
    one, two, three = (accepting.accept(unplaced_in("a", 1))[0] for _ in range(3))
    followed: list[str] = []
    after: list[int | None] = [None]

    def follow() -> list[str]:
        below = accepting.watermark()
        rows, _ = storage.list_messages(after[0], 10, channel=channel, below=below)
        storage.db.session.rollback()
        if rows:
            after[0] = rows[-1].seq
        followed.extend(r.id for r in rows)
        return [r.id for r in rows]

    def save(record: dict) -> None:
        storage.save_messages([record])
        accepting.settled([record])

    with db_app.app_context():
        assert follow() == []
        save(one)
        assert follow() == [one["id"]]
        save(three)
        assert follow() == [], "three waits below the watermark, at two"
        naive, _ = storage.list_messages(after[0], 10, channel=channel)
        assert [r.id for r in naive] == [three["id"]], "without it the cursor would pass two for good"
        save(two)
        assert follow() == [two["id"], three["id"]]
        assert follow() == []
    assert followed == [one["id"], two["id"], three["id"]]


def test_channel_pages_agree_with_one_listing_when_names_are_partly_folded_partly_deltas(db_app: Flask) -> None:
    """Each page reads only its first rows of ``channels`` (plus every delta): paging two at a time must list
    what one page of all lists, with the counts of folded and unfolded messages summed across the boundaries."""
    with db_app.app_context():
        for name in ("a", "c", "e", "g"):
            storage.save_messages(in_channel(name, 2))
        fold()
        for name in ("b", "c", "f", "g", "h"):  # c and g: folded and unfolded at once
            storage.save_messages(in_channel(name, 1))
        whole, more = storage.list_channels(None, 100)
        assert not more and counts(whole) == {"a": 2, "b": 1, "c": 3, "e": 2, "f": 1, "g": 3, "h": 1}
        paged, after = [], None
        while True:
            rows, more = storage.list_channels(after, 2)
            paged += rows
            if not more:
                break
            after = rows[-1].name
        assert [tuple(row) for row in paged] == [tuple(row) for row in whole]
