"""Database models, the migration entry point, and the two queries everything uses.

Run migrations with ``flask --app db db upgrade`` (``create_app`` below is a
minimal Flask app carrying only the database; the worker uses it too).
Reads ``SQLALCHEMY_DATABASE_URI`` through ``relay/settings.py``.

Order (docs/design.rst, "Order and position"): every row carries the
``position`` (column ``seq``, the primary key) and the ``offset`` (column
``channel_offset``) its message was given when it was accepted
(``relay.broker.positions``), so the listing is in accept order whatever
order workers commit in, and no row of the database serializes them. A
reader following the listing stays gapless because it never reads at or
past the *watermark*, the lowest position not yet settled (stored or
dead-lettered), which the list API reads from Redis: every position below it
is in the table for good, or never will be.

Channels: each row carries its ``channel``; a channel's listing is the same
``seq`` order filtered by an index on ``(channel, seq)``, which is its offset
order. ``GET /channels`` reads, per channel, how many messages are stored,
the highest position and offset, and the newest message from ``channels``
plus ``channel_deltas``: each save inserts one delta row per channel it
touched (an insert, so concurrent saves of one channel never wait on each
other), and :func:`fold_channel_deltas` (a worker thread, every second)
folds them into ``channels``. Retention folds first, then takes its
removals off ``channels``. The highest stored position and offsets seed the
Redis counters (:func:`position_floors`).
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects import mysql, sqlite

from relay.records import format_time, parse_time, record_channel, utc_now
from relay.settings import PROJECT_DIR, load_settings

db = SQLAlchemy()
migrate = Migrate()

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_PAYLOAD = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


class Message(db.Model):
    """One persisted message. ``seq`` is its position, ``channel_offset`` its offset; ``id`` is the API's UUIDv7."""

    __tablename__ = "messages"

    seq = sa.Column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False)
    id = sa.Column(sa.String(36), nullable=False, unique=True)
    channel = sa.Column(sa.String(64), nullable=False, server_default="dummy")
    channel_offset = sa.Column(sa.BigInteger, nullable=False)
    received_at = sa.Column(_DATETIME, nullable=False)
    persisted_at = sa.Column(_DATETIME, nullable=False)
    payload = sa.Column(_PAYLOAD, nullable=False)

    __table_args__ = (sa.Index("ix_messages_channel_seq", "channel", "seq"), _MYSQL_TABLE)


class Channel(db.Model):
    """One channel that has stored messages, as of the last fold: how many, the highest position and offset."""

    __tablename__ = "channels"
    __table_args__ = _MYSQL_TABLE

    name = sa.Column(sa.String(64), primary_key=True)
    messages = sa.Column(sa.BigInteger, nullable=False)
    last_seq = sa.Column(sa.BigInteger, nullable=False)
    last_offset = sa.Column(sa.BigInteger, nullable=False, server_default="0")
    last_message_at = sa.Column(_DATETIME, nullable=False)


class ChannelDelta(db.Model):
    """What one save added to one channel, until folded into ``channels`` (an insert: no row is shared)."""

    __tablename__ = "channel_deltas"
    __table_args__ = _MYSQL_TABLE

    id = sa.Column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True)
    channel = sa.Column(sa.String(64), nullable=False)
    messages = sa.Column(sa.BigInteger, nullable=False)
    last_seq = sa.Column(sa.BigInteger, nullable=False)
    last_offset = sa.Column(sa.BigInteger, nullable=False)
    last_message_at = sa.Column(_DATETIME, nullable=False)


# How long the worker's SQLite connections wait for the write lock: the worker waits a busy database out.
WRITER_BUSY_SECONDS = 30.0


def _engine_options(uri: str, timeout: float | None) -> dict[str, Any]:
    """Engine options for ``uri``; ``timeout`` bounds every wait on the database, None leaves them unbounded.

    The list API passes its ``LIST_DATABASE_TIMEOUT_SECONDS``: with MariaDB
    hung (stopped, its disk stalled) a connect, a read of an answer, a write
    of a query and the wait for a pooled connection each give up after it,
    so requests answer ``503 database_unavailable`` instead of hanging with
    the database (PyMySQL's timeouts are per socket operation, so a large
    page that keeps arriving is not cut). The worker passes None: it waits
    a database out however long it takes, its records safe in Redis.
    """
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": timeout or WRITER_BUSY_SECONDS}}
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 280}
    if timeout:
        options["pool_timeout"] = timeout
        options["connect_args"] = {"connect_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout}
    return options


def _tune_sqlite(engine: sa.Engine, immediate: bool, busy_seconds: float) -> None:
    """Use WAL, wait up to ``busy_seconds`` for a lock, and make writers take the write lock at BEGIN (``immediate``).

    Without BEGIN IMMEDIATE two SQLite writers can both start a deferred
    transaction and one fails with "database is locked" instead of waiting.
    This is SQLAlchemy's documented pysqlite transaction recipe.
    """

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def init_db(app: Flask, *, writer: bool = False, timeout: float | None = None) -> None:
    """Attach the database and migrations to ``app``; ``writer`` marks the worker's app, ``timeout`` bounds waits."""
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(uri, timeout))
    db.init_app(app)
    migrate.init_app(app, db, directory=str(app.config.get("MIGRATIONS_DIR", "migrations")))
    if uri.startswith("sqlite"):
        with app.app_context():
            _tune_sqlite(db.engine, immediate=writer, busy_seconds=timeout or WRITER_BUSY_SECONDS)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the minimal database app used by ``flask db`` and the Celery worker."""
    settings = load_settings()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings.sqlalchemy_database_uri,
        MIGRATIONS_DIR=PROJECT_DIR / "migrations",
    )
    if test_config:
        app.config.update(test_config)
    init_db(app, writer=True)
    return app


# The statements of every save, built once: constructing and compiling them per task was a tenth of the
# worker's CPU (py-spy); with bound parameters SQLAlchemy's compiled cache serves each after the first.
_MESSAGES = Message.__table__
_CHANNELS = Channel.__table__
_DELTAS = ChannelDelta.__table__
_ALREADY_STORED = sa.select(_MESSAGES.c.id).where(_MESSAGES.c.id.in_(sa.bindparam("ids", expanding=True)))
_INSERT = _MESSAGES.insert()
_INSERT_DELTAS = _DELTAS.insert()


def save_messages(
    records: Sequence[Mapping[str, Any]], on_stored: Callable[[Sequence[Mapping[str, Any]]], object] | None = None
) -> int:
    """Store queue records exactly once, in one transaction; return how many were new.

    Each record brings its ``position`` and ``offset``. Records whose id is
    already stored (a redelivered task) are skipped, so calling this twice
    with the same records stores them once. Two saves of one record at once
    (a redelivery racing the first delivery) may both find it absent: the
    unique keys make the second insert wait for the first and then fail, and
    the second save starts again without what the first stored. Nothing is
    locked but the rows written, so saves commit in parallel. An integrity
    error with nothing stored meanwhile is the records' own, and raised.
    ``on_stored`` gets the new rows (with ``received_at`` and
    ``persisted_at``) once they are committed.
    """
    unique = list({r["id"]: r for r in reversed(records)}.values())[::-1]
    if not unique:
        return 0
    session = db.session
    while True:
        try:
            stored = set(session.execute(_ALREADY_STORED, {"ids": [r["id"] for r in unique]}).scalars())
            now = utc_now()
            rows = [_row(r, now) for r in unique if r["id"] not in stored]
            if rows:
                session.execute(_INSERT, rows)
                session.execute(_INSERT_DELTAS, _deltas(rows))
            session.commit()
            break
        except sa.exc.IntegrityError:
            session.rollback()
            if not _any_stored(session, [row["id"] for row in rows]):
                raise
        except BaseException:
            session.rollback()
            raise
    if on_stored is not None and rows:
        on_stored(rows)
    return len(rows)


def _row(record: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    return {
        "seq": record["position"],
        "channel_offset": record["offset"],
        "id": record["id"],
        "channel": record_channel(record),
        "received_at": parse_time(record["received_at"]),
        "persisted_at": now,
        "payload": record["payload"],
    }


def _any_stored(session: Any, ids: Sequence[str]) -> bool:
    try:
        return bool(ids) and bool(session.execute(_ALREADY_STORED, {"ids": list(ids)}).first())
    finally:
        session.rollback()


def _deltas(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``channel_deltas`` row per channel in ``rows``: how many, highest position and offset, newest time."""
    added: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = added.setdefault(
            row["channel"], {"channel": row["channel"], "messages": 0, "last_seq": 0, "last_offset": 0}
        )
        entry["messages"] += 1
        entry["last_seq"] = max(entry["last_seq"], row["seq"])
        entry["last_offset"] = max(entry["last_offset"], row["channel_offset"])
        entry["last_message_at"] = max(entry.get("last_message_at", row["received_at"]), row["received_at"])
    return [added[name] for name in sorted(added)]


def _channel_upsert(dialect: str) -> sa.Executable:
    """Add a fold's ``messages`` to its channel and raise its highest position, offset and time; insert it if new.

    Each of the three is a maximum, so folding in any order, in any parts, gives the same row.
    """
    if dialect == "sqlite":
        insert = sqlite.insert(_CHANNELS)
        new, greatest = insert.excluded, sa.func.max
        return insert.on_conflict_do_update(
            index_elements=[_CHANNELS.c.name],
            set_={
                "messages": _CHANNELS.c.messages + new.messages,
                "last_seq": greatest(_CHANNELS.c.last_seq, new.last_seq),
                "last_offset": greatest(_CHANNELS.c.last_offset, new.last_offset),
                "last_message_at": greatest(_CHANNELS.c.last_message_at, new.last_message_at),
            },
        )
    insert = mysql.insert(_CHANNELS)
    new, greatest = insert.inserted, sa.func.greatest
    return insert.on_duplicate_key_update(
        messages=_CHANNELS.c.messages + new.messages,
        last_seq=greatest(_CHANNELS.c.last_seq, new.last_seq),
        last_offset=greatest(_CHANNELS.c.last_offset, new.last_offset),
        last_message_at=greatest(_CHANNELS.c.last_message_at, new.last_message_at),
    )


_UPSERTS = {dialect: _channel_upsert(dialect) for dialect in ("sqlite", "mysql")}


def fold_channel_deltas(limit: int = 10_000) -> int:
    """Fold up to ``limit`` of the oldest ``channel_deltas`` into ``channels``, in one transaction; return how many.

    On a connection of its own, whatever the session holds: on MariaDB its
    transaction is READ COMMITTED, so the locking read of the deltas locks
    the rows read and no gap (saves go on inserting deltas meanwhile), and
    waits for a save still inserting one, then sees it committed. Concurrent
    folds (one per worker instance) find each other's deltas gone and skip them.
    """
    with db.engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            connection = connection.execution_options(isolation_level="READ COMMITTED")
        with connection.begin():
            return _fold(connection, limit)


def _fold(connection: sa.Connection, limit: int) -> int:
    """Fold up to ``limit`` of the oldest deltas in ``connection``'s transaction; channels in name order.

    Retention updates channels in name order too, so the two never deadlock.
    """
    deltas = connection.execute(sa.select(_DELTAS).order_by(_DELTAS.c.id).limit(limit).with_for_update()).all()
    if deltas:
        folded: dict[str, dict[str, Any]] = {}
        for delta in deltas:
            entry = folded.setdefault(delta.channel, {"name": delta.channel, "messages": 0})
            entry["messages"] += delta.messages
            for column in ("last_seq", "last_offset", "last_message_at"):
                entry[column] = max(entry.get(column, getattr(delta, column)), getattr(delta, column))
        upsert = _UPSERTS["sqlite" if connection.dialect.name == "sqlite" else "mysql"]
        connection.execute(upsert, [folded[name] for name in sorted(folded)])
        connection.execute(_DELTAS.delete().where(_DELTAS.c.id.in_([delta.id for delta in deltas])))
    return len(deltas)


def position_floors() -> tuple[int, dict[str, int]]:
    """The highest stored position, and each channel's highest stored offset: what the counters start above.

    From ``channels`` and the deltas not folded yet, so messages removed by
    retention still count: their numbers are never given again.
    """
    session = db.session
    union = _channels_and_deltas("last_seq", "last_offset")
    rows = session.execute(
        sa.select(union.c.name, sa.func.max(union.c.last_seq), sa.func.max(union.c.last_offset)).group_by(union.c.name)
    ).all()
    highest = session.execute(sa.select(sa.func.max(_MESSAGES.c.seq))).scalar() or 0
    session.rollback()
    last_position = max([int(highest), *(int(row[1]) for row in rows)])
    return last_position, {row[0]: int(row[2]) for row in rows}


_COLUMNS = (
    Message.seq,
    Message.id,
    Message.channel,
    Message.channel_offset,
    Message.received_at,
    Message.persisted_at,
    Message.payload,
)


def list_messages(
    after: int | None, limit: int, descending: bool = False, channel: str | None = None, below: int | None = None
) -> tuple[list[sa.Row], bool]:
    """Return up to ``limit`` rows strictly after position ``after`` in position order, and whether more exist.

    ``descending`` walks from newest to oldest (``after`` is then an upper
    bound); ``channel`` keeps one channel's rows (through the ``(channel, seq)``
    index, which is its offset order); ``below`` (the watermark) leaves out
    every position at or above it. A keyset on ``seq``: no OFFSET, so a page
    deep in the table costs the same as the first.
    """
    query = sa.select(*_COLUMNS)
    if channel is not None:
        query = query.where(Message.channel == channel)
    if below is not None:
        query = query.where(Message.seq < below)
    if descending:
        if after is not None:
            query = query.where(Message.seq < after)
        query = query.order_by(Message.seq.desc())
    else:
        if after is not None:
            query = query.where(Message.seq > after)
        query = query.order_by(Message.seq)
    rows = list(db.session.execute(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_channels(after: str | None, limit: int, patterns: Sequence[str] | None = None) -> tuple[list[sa.Row], bool]:
    """Return up to ``limit`` channels named after ``after``, in name order, and whether more exist.

    ``patterns`` (None: every channel) keeps the channels a grant may read:
    exact names, prefixes ending in ``*``, or ``*`` alone (every channel).
    """
    union = _channels_and_deltas(
        "messages", "last_seq", "last_message_at", after=after, patterns=patterns, first=limit + 1
    )
    name = union.c.name
    query = (
        sa.select(
            name,
            sa.func.sum(union.c.messages).label("messages"),
            sa.func.max(union.c.last_seq).label("last_seq"),
            sa.func.max(union.c.last_message_at).label("last_message_at"),
        )
        .group_by(name)
        .order_by(name)
    )
    rows = list(db.session.execute(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _channels_and_deltas(
    *columns: str, after: str | None = None, patterns: Sequence[str] | None = None, first: int | None = None
) -> sa.Subquery:
    """``channels`` and the deltas not folded yet as one table of ``name`` and ``columns``, one row per side.

    ``after`` and ``patterns`` filter each side by name, where its index serves. ``first`` keeps
    only the first that many ``channels`` rows by name (the deltas, few until the next fold, all):
    enough for the first ``first`` names of the union, since any later ``channels`` name has
    ``first`` names before it. So a page reads its own rows, not every channel after the cursor.
    """
    sides = []
    for table, name in ((_CHANNELS, _CHANNELS.c.name), (_DELTAS, _DELTAS.c.channel)):
        side = sa.select(name.label("name"), *(table.c[column] for column in columns))
        if after is not None:
            side = side.where(name > after)
        if patterns is not None:
            side = side.where(sa.or_(sa.false(), *(_name_matches(name, pattern) for pattern in patterns)))
        if first is not None and table is _CHANNELS:
            side = sa.select(side.order_by(name).limit(first).subquery())  # SQLite: no LIMIT in a compound member
        sides.append(side)
    return sa.union_all(*sides).subquery()


def _name_matches(column: sa.ColumnElement[str], pattern: str) -> sa.ColumnElement[bool]:
    """A channel name equal to ``pattern``, or starting with it when it ends in ``*``.

    A prefix is a range on the primary key, ``prefix <= name < successor``,
    not ``LIKE``: ``_`` (a LIKE wildcard) is a channel character, and
    SQLite's ``LIKE`` ignores case where the grant does not. Both databases
    compare names byte by byte (BINARY; ``utf8mb4_bin``), and channel names
    are ASCII, so the successor of a prefix is its last character plus one.
    """
    if not pattern.endswith("*"):
        return column == pattern
    prefix = pattern[:-1]
    if not prefix:  # "*": every channel
        return sa.true()
    successor = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return sa.and_(column >= prefix, column < successor)


def channel_json(row: sa.Row) -> dict[str, Any]:
    """Shape a ``channels`` row as the API's channel object."""
    return {"name": row.name, "messages": int(row.messages), "last_message_at": format_time(row.last_message_at)}


def get_message(message_id: str) -> sa.Row | None:
    """Return one stored message by id, or None."""
    return db.session.execute(sa.select(*_COLUMNS).where(Message.id == message_id)).first()


def message_json(row: sa.Row) -> dict[str, Any]:
    """Shape a row as the API's message object (payload embedded as stored JSON text)."""
    return {
        "id": row.id,
        "channel": row.channel,
        "offset": row.channel_offset,
        "position": row.seq,
        "received_at": format_time(row.received_at),
        "persisted_at": format_time(row.persisted_at),
        "payload": orjson.Fragment(row.payload),
    }


def pending_message_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """Shape a pending record (accepted, not stored yet) as the API's message object: ``persisted_at`` null."""
    return {
        "id": record["id"],
        "channel": record_channel(record),
        "offset": record["offset"],
        "position": record["position"],
        "received_at": record["received_at"],
        "persisted_at": None,
        "payload": orjson.Fragment(record["payload"]),
    }


def remove_expired(cutoff: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest messages persisted before ``cutoff``; return how many.

    Retention (``RETENTION_DAYS``) calls this in a loop. It always removes a
    prefix of the ``seq`` order: it reads the ``limit`` oldest rows by primary
    key and keeps those before the first one persisted at or after
    ``cutoff``. Positions are given at acceptance and rows are stored
    moments later, so ``persisted_at`` grows with ``seq`` but for those
    moments: the stop is where the old rows end (a row stored late holds the
    ones after it back only until it is old enough itself). That needs no
    index on the timestamp, and the table stays a contiguous tail of the
    listing (a cursor into removed rows continues at the oldest row left).

    The rows are deleted by primary-key equality: on InnoDB that takes record
    locks only, no gap or next-key lock (a range ``seq <= n`` would lock the
    next record, the end of the table when everything is old, and block
    inserts). One short transaction per call; rows another process removed
    meanwhile are simply not counted. The channels' counts go down by what
    was removed from each, after the deltas are folded in the same
    transaction (so each such channel has its row; a channel whose messages
    all expired stays listed, with 0 messages). On MariaDB that fold's read
    holds back the saves' delta inserts until this short transaction ends.
    """
    table = Message.__table__
    session = db.session
    try:
        while _fold(session.connection(), 10_000) == 10_000:  # in this transaction: every channel has its row
            pass
        head = session.execute(
            sa.select(table.c.seq, table.c.channel, table.c.persisted_at < cutoff).order_by(table.c.seq).limit(limit)
        ).all()
        expired = [seq for seq, _channel, _old in itertools.takewhile(lambda row: row[2], head)]
        removed = 0
        if expired:
            # Lock exactly these rows (primary-key equality: record locks only) so the counts taken off
            # the channels are what this transaction deletes, even beside another remover.
            mine = session.execute(
                sa.select(table.c.seq, table.c.channel).where(table.c.seq.in_(expired)).with_for_update()
            ).all()
            removed = session.execute(table.delete().where(table.c.seq.in_([seq for seq, _ in mine]))).rowcount
            gone = collections.Counter(channel for _, channel in mine)
            channels = Channel.__table__
            for name in sorted(gone):
                session.execute(
                    channels.update().where(channels.c.name == name).values(messages=channels.c.messages - gone[name])
                )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return removed
