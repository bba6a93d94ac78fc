"""The committed migrations: they build exactly the models' schema, and upgrading keeps the data."""

from __future__ import annotations

from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay import storage
from tests.helpers import ROOT

MIGRATIONS = str(ROOT / "migrations")


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
