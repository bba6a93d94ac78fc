"""The committed migrations: they build exactly the models' schema, and upgrading keeps the data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay import storage
from tests.helpers import ROOT, mariadb_database

MIGRATIONS = str(ROOT / "migrations")
BEFORE_POSITIONS = "5b1e0c2f9a41"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_migrated_schema_is_exactly_the_models(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), storage.db.metadata)
    engine.dispose()
    assert differences == []


def test_upgrading_to_channels_puts_stored_messages_in_dummy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        flask_migrate.upgrade(directory=MIGRATIONS, revision="73c99d0a3b93")  # before channels
        session = storage.db.session
        session.execute(
            sa.text(
                "INSERT INTO messages (seq, id, received_at, persisted_at, payload) VALUES "
                "(1, '0195d5e0-0000-7000-8000-000000000001', '2026-11-29 08:00:00.000001', "
                "'2026-11-29 08:00:01', '{\"n\": 1}'),"
                "(2, '0195d5e0-0000-7000-8000-000000000002', '2026-11-29 08:00:00.000002', "
                "'2026-11-29 08:00:01', '{\"n\": 2}')"
            )
        )
        session.execute(sa.text("UPDATE message_sequence SET last_seq = 2"))
        session.commit()
        flask_migrate.upgrade(directory=MIGRATIONS)
        rows, _ = storage.list_messages(None, 10, channel="dummy")
        channels, _ = storage.list_channels(None, 10)
        assert [r.seq for r in rows] == [1, 2]
        assert [storage.channel_json(c) for c in channels] == [
            {"name": "dummy", "messages": 2, "last_message_at": "2026-11-29T08:00:00.000002Z"}
        ]
        session.commit()  # end the read transaction: SQLite's migrations need the write lock
        flask_migrate.downgrade(directory=MIGRATIONS, revision="73c99d0a3b93")
        assert "channels" not in sa.inspect(storage.db.engine).get_table_names()
        flask_migrate.upgrade(directory=MIGRATIONS)
        storage.db.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own, not migrated: a SQLite file, or a MariaDB database created for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    server_url = os.environ.get("TEST_MYSQL_URL")
    if not server_url:
        pytest.skip("TEST_MYSQL_URL is not set (e.g. mysql+pymysql://root@127.0.0.1:3306/test)")
    with mariadb_database(server_url, "msgmigrate") as url:
        yield url


# Rows stored by the release before positions: channels interleaved, gaps in seq (numbers a redelivery
# took, rows retention removed: seq 1 was channel z's only message). (seq, channel).
OLD_ROWS = [(2, "a"), (3, "b"), (5, "a"), (6, "c"), (9, "b"), (10, "a"), (11, "a"), (14, "c"), (15, "b")]
OLD_LAST_SEQ = 17


def received(seq: int) -> str:
    return f"2026-11-30 04:00:00.{seq:06d}"


def old_channels() -> list[tuple[str, int, int, str]]:
    """``channels`` as the release before kept it: count, highest seq and newest ``received_at`` per channel."""
    rows = [("z", 0, 1, received(1))]  # every message expired: listed with 0
    for name in ("a", "b", "c"):
        seqs = [seq for seq, channel in OLD_ROWS if channel == name]
        rows.append((name, len(seqs), max(seqs), received(max(seqs))))
    return sorted(rows)


def schema(engine: sa.Engine) -> dict[str, Any]:
    """Every table's columns, primary key, indexes and unique constraints (alembic's bookkeeping left out)."""
    inspector = sa.inspect(engine)
    return {
        table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
            ),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
        }
        for table in sorted(inspector.get_table_names())
        if table != "alembic_version"
    }


def migrated_before_positions(url: str) -> dict[str, Any]:
    """Migrate ``url`` to the release before positions and store OLD_ROWS as it did; return its schema."""
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        flask_migrate.upgrade(directory=MIGRATIONS, revision=BEFORE_POSITIONS)
        storage.db.engine.dispose()
    engine = sa.create_engine(url)
    before = schema(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO messages (seq, id, channel, received_at, persisted_at, payload) "
                "VALUES (:seq, :id, :channel, :received_at, :received_at, :payload)"
            ),
            [
                {
                    "seq": seq,
                    "id": f"0195d5e0-0000-7000-8000-{seq:012d}",
                    "channel": channel,
                    "received_at": received(seq),
                    "payload": f'{{"seq": {seq}}}',
                }
                for seq, channel in OLD_ROWS
            ],
        )
        conn.execute(
            sa.text("INSERT INTO channels (name, messages, last_seq, last_message_at) VALUES (:n, :m, :s, :t)"),
            [{"n": n, "m": m, "s": seq, "t": t} for n, m, seq, t in old_channels()],
        )
        conn.execute(sa.text("UPDATE message_sequence SET last_seq = :last"), {"last": OLD_LAST_SEQ})
    engine.dispose()
    return before


def migrate_to(url: str, revision: str) -> None:
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        if revision == "head":
            flask_migrate.upgrade(directory=MIGRATIONS)
        else:
            flask_migrate.downgrade(directory=MIGRATIONS, revision=revision)
        storage.db.engine.dispose()


def table_rows(url: str, query: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(row) for row in conn.execute(sa.text(query))]
    engine.dispose()
    return rows


def test_upgrading_to_positions_numbers_each_channel_and_downgrading_restores_the_counter(empty_url: str) -> None:
    """Rows of several channels, interleaved with gaps in seq: each gets its offset, 1..n within its channel in
    seq order (seq stays its position); the counter row goes; downgrading brings it back above every position."""
    before = migrated_before_positions(empty_url)
    migrate_to(empty_url, "head")
    offsets = {}
    for name in ("a", "b", "c"):
        offsets |= {seq: n for n, seq in enumerate((seq for seq, channel in OLD_ROWS if channel == name), 1)}
    assert table_rows(empty_url, "SELECT seq, channel, channel_offset FROM messages ORDER BY seq") == [
        (seq, channel, offsets[seq]) for seq, channel in OLD_ROWS
    ]
    assert table_rows(empty_url, "SELECT name, messages, last_seq, last_offset FROM channels ORDER BY name") == [
        ("a", 4, 11, 4), ("b", 3, 15, 3), ("c", 2, 14, 2), ("z", 0, 1, 0)
    ]  # fmt: skip
    engine = sa.create_engine(empty_url)
    tables = sa.inspect(engine).get_table_names()
    engine.dispose()
    assert "message_sequence" not in tables and "channel_deltas" in tables
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": empty_url})
    with app.app_context():
        assert storage.position_floors() == (15, {"a": 4, "b": 3, "c": 2, "z": 0})
        rows, _ = storage.list_messages(None, 10, channel="b")
        assert [(r.seq, storage.message_json(r)["offset"]) for r in rows] == [(3, 1), (9, 2), (15, 3)]
        channels, _ = storage.list_channels(None, 10)
        assert [(c.name, c.messages) for c in channels] == [("a", 4), ("b", 3), ("c", 2), ("z", 0)]
        storage.db.engine.dispose()

    migrate_to(empty_url, BEFORE_POSITIONS)
    [(last_seq,)] = table_rows(empty_url, "SELECT last_seq FROM message_sequence")
    assert last_seq >= max(seq for seq, _ in OLD_ROWS), "the release before would give a stored seq again"
    engine = sa.create_engine(empty_url)
    assert schema(engine) == before
    engine.dispose()
    assert table_rows(empty_url, "SELECT seq, channel FROM messages ORDER BY seq") == OLD_ROWS
    stored = table_rows(empty_url, "SELECT name, messages, last_seq, last_message_at FROM channels ORDER BY name")
    assert [(n, m, seq, str(t)[:26]) for n, m, seq, t in stored] == old_channels()


def test_downgrading_folds_what_the_new_workers_saved_into_the_channels(empty_url: str) -> None:
    """The new release saved rows and stopped before folding their deltas: the release before finds every
    channel's count, newest message and counter as its own saves would have left them."""
    migrated_before_positions(empty_url)
    migrate_to(empty_url, "head")
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": empty_url})
    new = [("a", 5, 16), ("d", 1, 17), ("a", 6, 18)]  # (channel, offset, position) above the floors
    with app.app_context():
        for channel, offset, position in new:
            record = {"id": f"0195d5e1-0000-7000-8000-{position:012d}", "channel": channel, "payload": "{}"}
            record |= {"offset": offset, "position": position, "received_at": f"2026-11-30T04:00:00.{position:06d}Z"}
            assert storage.save_messages([record]) == 1
        storage.db.engine.dispose()
    migrate_to(empty_url, BEFORE_POSITIONS)
    [(last_seq,)] = table_rows(empty_url, "SELECT last_seq FROM message_sequence")
    assert last_seq >= 18
    stored = table_rows(empty_url, "SELECT name, messages, last_seq, last_message_at FROM channels ORDER BY name")
    expected = {row[0]: row for row in old_channels()}
    expected["a"] = ("a", 6, 18, received(18))
    expected["d"] = ("d", 1, 17, received(17))
    assert [(n, m, seq, str(t)[:26]) for n, m, seq, t in stored] == sorted(expected.values())
