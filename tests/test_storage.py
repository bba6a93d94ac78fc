"""Persistence and listing against real SQLite and MariaDB: exactly once, gapless, keyset.

Records get their offset and position as the accept script would give them
(``tests.helpers.place``); followers stop below the watermark, the lowest
position not saved yet, as the list API does (``Accepting`` below).
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import threading
import time
from collections.abc import Callable

import orjson
import pytest
import sqlalchemy as sa
from flask import Flask

from relay import storage
from relay.records import make_record, parse_message
from tests.helpers import place


def records(count: int, start: int = 0) -> list[dict]:
    return place([make_record({"n": start + i}, dt.datetime(2026, 11, 29, 7, 40, 21, 123456)) for i in range(count)])


class Accepting:
    """Positions given as the accept script gives them, and the watermark the list API reads from Redis.

    A batch is *accepted* (given its positions, unsaved) before it is saved
    and *settled* once its save has committed; the watermark is the lowest
    unsaved position, else the next one to be given.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unsaved: set[int] = set()
        self.last = 0

    def accept(self, batch: list[dict]) -> list[dict]:
        with self.lock:
            place(batch)
            self.unsaved |= {r["position"] for r in batch}
            self.last = max([self.last, *self.unsaved])
        return batch

    def settled(self, batch: list[dict]) -> None:
        with self.lock:
            self.unsaved -= {r["position"] for r in batch}

    def watermark(self) -> int:
        with self.lock:
            return min(self.unsaved) if self.unsaved else self.last + 1


def stored_ids(app: Flask) -> list[str]:
    with app.app_context():
        return list(storage.db.session.execute(sa.select(storage.Message.id).order_by(storage.Message.seq)).scalars())


def test_save_messages_stores_every_field(db_app: Flask) -> None:
    batch = records(3)
    with db_app.app_context():
        assert storage.save_messages(batch) == 3
        rows, has_more = storage.list_messages(None, 10)
    assert not has_more
    assert [r.id for r in rows] == [r["id"] for r in batch]
    first = storage.message_json(rows[0])
    assert first["received_at"] == "2026-11-29T07:40:21.123456Z"
    assert first["persisted_at"].endswith("Z")
    assert (first["offset"], first["position"]) == (batch[0]["offset"], batch[0]["position"])
    assert [r.seq for r in rows] == [r["position"] for r in batch]
    assert orjson.loads(orjson.dumps(first["payload"])) == {"n": 0}


def test_redelivered_records_are_stored_once(db_app: Flask) -> None:
    batch = records(5)
    with db_app.app_context():
        assert storage.save_messages(batch) == 5
        assert storage.save_messages(batch) == 0
        assert storage.save_messages(batch[2:] + records(2, 100)) == 2
        assert storage.save_messages(batch[:1] + batch[:1]) == 0
    assert len(stored_ids(db_app)) == 7
    assert len(set(stored_ids(db_app))) == 7


def test_payload_round_trips_unicode_and_escapes_exactly(db_app: Flask) -> None:
    body = '{"t": "wörld 🎉 𝄞 \\"q\\" \\\\ \\n\\t \\u0000 \\u2028 \\/", "deep": [[[{"k": -0.5}]]], "e": {}}'
    payload = parse_message(body.encode())
    [record] = place([make_record(payload, dt.datetime(2026, 1, 1))])
    with db_app.app_context():
        storage.save_messages([record])
        row = storage.get_message(record["id"])
    assert row is not None
    assert orjson.loads(row.payload) == payload
    assert orjson.loads(row.payload)["t"] == 'wörld 🎉 𝄞 "q" \\ \n\t \x00 \u2028 /'


def test_list_messages_pages_both_ways_without_overlap(db_app: Flask) -> None:
    batch = records(25)
    with db_app.app_context():
        storage.save_messages(batch)
        seen, after, has_more = [], None, True
        while has_more:
            rows, has_more = storage.list_messages(after, 7)
            seen += [r.id for r in rows]
            after = rows[-1].seq
        assert seen == [r["id"] for r in batch]
        backwards, before, has_more = [], None, True
        while has_more:
            rows, has_more = storage.list_messages(before, 10, descending=True)
            backwards += [r.id for r in rows]
            before = rows[-1].seq
        assert backwards == seen[::-1]
        assert storage.list_messages(after, 7) == ([], False)


def test_get_message_unknown_id_is_none(db_app: Flask) -> None:
    with db_app.app_context():
        assert storage.get_message("01a22649-0717-7cb0-a31f-94907ddc217f") is None


def follow_while_writing(
    db_app: Flask, batch: Callable[[int, int], list[dict]], channel: str | None = None
) -> tuple[list[dict], list[tuple[int, str]]]:
    """Four writers commit 15 batches each concurrently, with random stalls before COMMIT, while a
    follower polls the listing (of ``channel``, or of all) with its cursor; (written, followed).

    ``batch(writer, round)`` makes each batch, accepted (given its positions) before it is saved, so
    batches commit out of position order; the follower reads the watermark before each page and
    lists only below it, as the list API does. ``followed`` is (seq, id) in the order seen.
    """
    with db_app.app_context():
        engine = storage.db.engine
    stall = threading.local()
    accepting = Accepting()

    @sa.event.listens_for(engine, "commit")
    def slow_commit(_conn: sa.Connection) -> None:
        if getattr(stall, "on", False):
            time.sleep(random.uniform(0, 0.02))

    written: list[dict] = []
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        stall.on = True
        try:
            with db_app.app_context():
                for round_ in range(15):
                    records = accepting.accept(batch(index, round_))
                    storage.save_messages(records)
                    accepting.settled(records)
                    with lock:
                        written.extend(records)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    followed: list[tuple[int, str]] = []

    def follower() -> None:
        after = None
        with db_app.app_context():
            while True:
                finished = done.is_set()
                below = accepting.watermark()  # read before the page, as the list API does
                rows, _ = storage.list_messages(after, 7 if channel else 50, channel=channel, below=below)
                storage.db.session.rollback()  # a fresh snapshot per poll, as each HTTP request gets
                followed.extend((r.seq, r.id) for r in rows)
                if rows:
                    after = rows[-1].seq
                elif finished:
                    return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    reader = threading.Thread(target=follower)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(60)
    sa.event.remove(engine, "commit", slow_commit)
    assert not errors, errors
    return written, followed


def test_follower_sees_every_row_while_writers_commit_out_of_order(db_app: Flask) -> None:
    """Several writers commit concurrently (with random stalls before COMMIT), out of position order; a
    follower polling its cursor below the watermark must end with exactly the written set, each once, in order."""

    def unplaced(index: int, round_: int) -> list[dict]:
        stamp = dt.datetime(2026, 11, 29, 7, 40, 21)
        return [make_record({"n": index * 1000 + round_ * 10 + i}, stamp) for i in range(random.randint(1, 8))]

    written, followed = follow_while_writing(db_app, unplaced)
    ids = [message_id for _, message_id in followed]
    assert len(ids) == len(set(ids)), "the follower saw a row twice"
    assert set(ids) == {r["id"] for r in written}, f"missed {len(written) - len(set(ids))} row(s)"
    assert [seq for seq, _ in followed] == sorted(r["position"] for r in written), "not in position order"
    assert len(written) > 100


@pytest.mark.mysql
def test_listing_query_uses_the_primary_key_range_on_mariadb(mysql_url: str) -> None:
    """The page query as the list API sends it: after the cursor, below the watermark."""
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": mysql_url})
    with app.app_context():
        batch = records(50)
        storage.save_messages(batch)
        cursor, watermark = batch[10]["position"], batch[40]["position"]
        for descending in (False, True):
            op = "<" if descending else ">"
            order = "DESC" if descending else "ASC"
            plan = storage.db.session.execute(
                sa.text(
                    f"EXPLAIN SELECT seq FROM messages WHERE seq {op} {cursor} AND seq < {watermark} "  # noqa: S608
                    f"ORDER BY seq {order} LIMIT 11"
                )
            ).mappings().one()  # fmt: skip
            assert plan["key"] == "PRIMARY"
            assert plan["type"] == "range"
            assert "filesort" not in (plan["Extra"] or "")
        storage.db.engine.dispose()


def unplaced_in(channel: str, count: int, start: int = 0) -> list[dict]:
    """Records of ``channel`` as the ingestion API makes them, before the accept script places them."""
    stamp = dt.datetime(2026, 11, 30, 4, 0, 0)
    return [make_record({"n": start + i}, stamp + dt.timedelta(microseconds=i), channel=channel) for i in range(count)]


def in_channel(channel: str, count: int, start: int = 0) -> list[dict]:
    return place(unplaced_in(channel, count, start))


def test_channel_listing_keeps_one_channel_in_seq_order_and_channels_count_them(db_app: Flask) -> None:
    a1, b1, a2 = in_channel("a", 3), in_channel("b", 2), in_channel("a", 2, start=10)
    with db_app.app_context():
        for batch in (a1, b1, a2 + in_channel("c.x:y-z_1", 1)):
            storage.save_messages(batch)
        rows, more = storage.list_messages(None, 10, channel="a")
        assert [r.id for r in rows] == [r["id"] for r in a1 + a2] and not more
        assert {storage.message_json(r)["channel"] for r in rows} == {"a"}
        offsets = [storage.message_json(r)["offset"] for r in rows]
        assert offsets == [r["offset"] for r in a1 + a2] == list(range(offsets[0], offsets[0] + 5))
        first, more = storage.list_messages(None, 3, channel="a")
        rest, done = storage.list_messages(first[-1].seq, 3, channel="a")
        assert [r.id for r in first + rest] == [r["id"] for r in a1 + a2] and more and not done
        newest, _ = storage.list_messages(None, 2, descending=True, channel="b")
        assert [r.id for r in newest] == [r["id"] for r in reversed(b1)]
        assert len(storage.list_messages(None, 100)[0]) == 8  # the all-channels listing keeps everything
        channels, more = storage.list_channels(None, 10)
        assert [storage.channel_json(c) for c in channels] == [
            {"name": "a", "messages": 5, "last_message_at": max(r["received_at"] for r in a1 + a2)},
            {"name": "b", "messages": 2, "last_message_at": max(r["received_at"] for r in b1)},
            {"name": "c.x:y-z_1", "messages": 1, "last_message_at": "2026-11-30T04:00:00.000000Z"},
        ] and not more
        page, more = storage.list_channels(None, 2)
        after, last = storage.list_channels(page[-1].name, 2)
        assert [c.name for c in page + after] == ["a", "b", "c.x:y-z_1"] and more and not last
        # A redelivery stores nothing and counts nothing.
        assert storage.save_messages(a1) == 0
        assert storage.list_channels(None, 1)[0][0].messages == 5


def test_records_queued_before_channels_existed_land_in_dummy(db_app: Flask) -> None:
    old = [make_record({"n": i}, dt.datetime(2026, 11, 29)) for i in range(2)]
    for record in old:
        del record["channel"]
    place(old)
    with db_app.app_context():
        storage.save_messages(old)
        rows, _ = storage.list_messages(None, 10, channel="dummy")
        assert [r.id for r in rows] == [r["id"] for r in old]


def test_channel_follower_sees_every_row_of_its_channel_while_writers_commit_at_once(db_app: Flask) -> None:
    """Four writers commit mixed-channel batches concurrently, with stalls before COMMIT; a follower of
    one channel, polling with its cursor, ends with exactly that channel's rows, each once, in order."""

    def mixed(index: int, round_: int) -> list[dict]:
        start = index * 1000 + round_ * 10
        return [r for c in random.sample("abc", 2) for r in unplaced_in(c, random.randint(1, 4), start=start)]

    written, followed = follow_while_writing(db_app, mixed, channel="a")
    of_a = {r["id"] for r in written if r["channel"] == "a"}
    ids = [message_id for _, message_id in followed]
    assert len(ids) == len(set(ids)), "the follower saw a row twice"
    assert set(ids) == of_a, f"missed {len(of_a - set(ids))} row(s) of channel a"
    assert [seq for seq, _ in followed] == sorted(r["position"] for r in written if r["channel"] == "a")
    assert len(of_a) > 20
    with db_app.app_context():
        counts = {c.name: c.messages for c in storage.list_channels(None, 10)[0]}
    assert counts == dict(collections.Counter(r["channel"] for r in written))
