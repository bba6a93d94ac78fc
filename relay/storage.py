"""Database models, the migration entry point, and the two queries everything uses.

Run migrations with ``flask --app db db upgrade`` (``create_app`` below is a
minimal Flask app carrying only the database; the worker uses it too).
Reads ``SQLALCHEMY_DATABASE_URI`` through ``relay/settings.py``.

Ordering: every row gets ``seq``, a number taken from the single-row
``message_sequence`` table *inside* the inserting transaction. Taking it
row-locks the counter until commit, so transactions commit in ``seq`` order
and a reader that has seen ``seq = n`` can never later find a row with a
smaller ``seq`` appear. That is what makes following the listing with a
cursor gapless, even with many workers (a worker-written timestamp or an
auto-increment id does not give this: a row can commit late with an earlier
key). The lock is held for one short transaction per *batch*, so it costs
little at thousands of rows per transaction.

Channels: each row carries its ``channel``; a channel's listing is the same
``seq`` order filtered by an index on ``(channel, seq)``, so it inherits the
guarantee (a subsequence of a gapless order is gapless). The ``channels``
table keeps, per channel, how many messages are stored and the newest one,
updated in the inserting transaction (under the counter lock, so writers
never race on it) and by retention, so ``GET /channels`` never counts rows.
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
    """One persisted message. ``seq`` orders the listing; ``id`` is the API's UUIDv7."""

    __tablename__ = "messages"

    seq = sa.Column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False)
    id = sa.Column(sa.String(36), nullable=False, unique=True)
    channel = sa.Column(sa.String(64), nullable=False, server_default="dummy")
    received_at = sa.Column(_DATETIME, nullable=False)
    persisted_at = sa.Column(_DATETIME, nullable=False)
    payload = sa.Column(_PAYLOAD, nullable=False)

    __table_args__ = (sa.Index("ix_messages_channel_seq", "channel", "seq"), _MYSQL_TABLE)


class Channel(db.Model):
    """One channel that has stored messages: how many are stored now, and the newest one."""

    __tablename__ = "channels"
    __table_args__ = _MYSQL_TABLE

    name = sa.Column(sa.String(64), primary_key=True)
    messages = sa.Column(sa.BigInteger, nullable=False)
    last_seq = sa.Column(sa.BigInteger, nullable=False)
    last_message_at = sa.Column(_DATETIME, nullable=False)


class MessageSequence(db.Model):
    """The single-row counter handing out ``Message.seq`` in commit order."""

    __tablename__ = "message_sequence"
    __table_args__ = _MYSQL_TABLE

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    last_seq = sa.Column(sa.BigInteger, nullable=False)


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
_COUNTER = MessageSequence.__table__
_MESSAGES = Message.__table__
_CHANNELS = Channel.__table__
_ADVANCE = (
    _COUNTER.update()
    .where(_COUNTER.c.id == 1)
    .values(last_seq=_COUNTER.c.last_seq + sa.bindparam("advance_by", type_=sa.BigInteger))
)
_LAST = sa.select(_COUNTER.c.last_seq).where(_COUNTER.c.id == 1)
_ALREADY_STORED = sa.select(_MESSAGES.c.id).where(_MESSAGES.c.id.in_(sa.bindparam("ids", expanding=True)))
_INSERT = _MESSAGES.insert()


def _channel_upsert(dialect: str) -> sa.Executable:
    """Add a row's ``messages`` to its channel's count and make it the newest, inserting the channel if new."""
    if dialect == "sqlite":
        insert = sqlite.insert(_CHANNELS)
        return insert.on_conflict_do_update(
            index_elements=[_CHANNELS.c.name],
            set_={
                "messages": _CHANNELS.c.messages + insert.excluded.messages,
                "last_seq": insert.excluded.last_seq,
                "last_message_at": insert.excluded.last_message_at,
            },
        )
    insert = mysql.insert(_CHANNELS)
    return insert.on_duplicate_key_update(
        messages=_CHANNELS.c.messages + insert.inserted.messages,
        last_seq=insert.inserted.last_seq,
        last_message_at=insert.inserted.last_message_at,
    )


_UPSERTS = {dialect: _channel_upsert(dialect) for dialect in ("sqlite", "mysql")}


def save_messages(
    records: Sequence[Mapping[str, str]], on_stored: Callable[[Sequence[Mapping[str, Any]]], object] | None = None
) -> int:
    """Store queue records exactly once, in one transaction; return how many were new.

    Records whose id is already stored (a redelivered task) are skipped, so
    calling this twice with the same records stores them once. The id check
    runs after the sequence lock is taken, so concurrent workers holding the
    same record cannot both insert it. ``on_stored`` gets the new rows
    (with ``received_at`` and ``persisted_at``) once they are committed.
    """
    unique = list({r["id"]: r for r in reversed(records)}.values())[::-1]
    if not unique:
        return 0
    session = db.session
    try:
        session.execute(_ADVANCE, {"advance_by": len(unique)})
        last = session.execute(_LAST).scalar_one()
        stored = set(session.execute(_ALREADY_STORED, {"ids": [r["id"] for r in unique]}).scalars())
        now = utc_now()
        first = last - len(unique) + 1
        rows = [
            {
                "seq": first + offset,
                "id": r["id"],
                "channel": record_channel(r),
                "received_at": parse_time(r["received_at"]),
                "persisted_at": now,
                "payload": r["payload"],
            }
            for offset, r in enumerate(unique)
            if r["id"] not in stored
        ]
        if rows:
            session.execute(_INSERT, rows)
            _count_in_channels(session, rows)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if on_stored is not None and rows:
        on_stored(rows)
    return len(rows)


def _count_in_channels(session: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add freshly inserted ``rows`` (in ``seq`` order) to their channels' counts and newest message.

    One upsert per channel the batch touches, sent as one ``executemany``
    (PyMySQL sends it as one multi-row statement), its rows in name order:
    retention updates in the same order, so the two never deadlock on
    channel rows.
    """
    added: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = added.setdefault(row["channel"], {"name": row["channel"], "messages": 0})
        entry["messages"] += 1
        entry["last_seq"], entry["last_message_at"] = row["seq"], row["received_at"]
    dialect = session.get_bind().dialect.name
    session.execute(_UPSERTS["sqlite" if dialect == "sqlite" else "mysql"], [added[name] for name in sorted(added)])


_COLUMNS = (Message.seq, Message.id, Message.channel, Message.received_at, Message.persisted_at, Message.payload)


def list_messages(
    after: int | None, limit: int, descending: bool = False, channel: str | None = None
) -> tuple[list[sa.Row], bool]:
    """Return up to ``limit`` rows strictly after ``after`` in ``seq`` order, and whether more exist.

    ``descending`` walks from newest to oldest (``after`` is then an upper
    bound); ``channel`` keeps one channel's rows (through the ``(channel, seq)``
    index). A keyset on ``seq``: no OFFSET, so a page deep in the table costs
    the same as the first.
    """
    query = sa.select(*_COLUMNS)
    if channel is not None:
        query = query.where(Message.channel == channel)
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
    query = sa.select(Channel.name, Channel.messages, Channel.last_message_at).order_by(Channel.name)
    if after is not None:
        query = query.where(Channel.name > after)
    if patterns is not None:
        query = query.where(sa.or_(sa.false(), *(_name_matches(pattern) for pattern in patterns)))
    rows = list(db.session.execute(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _name_matches(pattern: str) -> sa.ColumnElement[bool]:
    """A channel name equal to ``pattern``, or starting with it when it ends in ``*``.

    A prefix is a range on the primary key, ``prefix <= name < successor``,
    not ``LIKE``: ``_`` (a LIKE wildcard) is a channel character, and
    SQLite's ``LIKE`` ignores case where the grant does not. Both databases
    compare names byte by byte (BINARY; ``utf8mb4_bin``), and channel names
    are ASCII, so the successor of a prefix is its last character plus one.
    """
    if not pattern.endswith("*"):
        return Channel.name == pattern
    prefix = pattern[:-1]
    if not prefix:  # "*": every channel
        return sa.true()
    successor = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return sa.and_(Channel.name >= prefix, Channel.name < successor)


def channel_json(row: sa.Row) -> dict[str, Any]:
    """Shape a ``channels`` row as the API's channel object."""
    return {"name": row.name, "messages": row.messages, "last_message_at": format_time(row.last_message_at)}


def get_message(message_id: str) -> sa.Row | None:
    """Return one stored message by id, or None."""
    return db.session.execute(sa.select(*_COLUMNS).where(Message.id == message_id)).first()


def message_json(row: sa.Row) -> dict[str, Any]:
    """Shape a row as the API's message object (payload embedded as stored JSON text)."""
    return {
        "id": row.id,
        "channel": row.channel,
        "received_at": format_time(row.received_at),
        "persisted_at": format_time(row.persisted_at),
        "payload": orjson.Fragment(row.payload),
    }


def remove_expired(cutoff: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest messages persisted before ``cutoff``; return how many.

    Retention (``RETENTION_DAYS``) calls this in a loop. It always removes a
    prefix of the ``seq`` order: it reads the ``limit`` oldest rows by primary
    key and keeps those before the first one persisted at or after
    ``cutoff``. ``persisted_at`` is taken under the counter lock, so it grows
    with ``seq`` and the stop is where the old rows end; that needs no index
    on the timestamp, and the table stays a contiguous tail of the listing
    (a cursor into removed rows continues at the oldest row left).

    The rows are deleted by primary-key equality: on InnoDB that takes record
    locks only, no gap or next-key lock (a range ``seq <= n`` would lock the
    next record, the end of the table when everything is old, and block
    inserts). It never touches ``message_sequence``. One short transaction per
    call; rows another process removed meanwhile are simply not counted.
    The channels' counts go down by what was removed from each (a channel
    whose messages all expired stays listed, with 0 messages).
    """
    table = Message.__table__
    session = db.session
    try:
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
