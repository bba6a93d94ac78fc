"""Which failed writes are about the record: real errors from SQLite and MariaDB, raised by real statements."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from relay.db_errors import about_the_record
from tests.helpers import POISON_TRIGGER, mariadb_user


def failure(engine: sa.Engine, *statements: str) -> sa.exc.DBAPIError:
    """Run ``statements`` in one transaction on ``engine`` and return the error the last one raised."""
    with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    return raised.value


INSERT = "INSERT INTO t (id, v) VALUES ({id}, {v})"


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'classify.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> 'bad'))")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'one')")
    return engine


@pytest.mark.parametrize(
    "statement",
    [
        INSERT.format(id=1, v="'dup'"),
        INSERT.format(id=2, v="NULL"),
        INSERT.format(id=2, v="'bad'"),
        "INSERT INTO t (id, v) VALUES ('not a number', 'x')",
    ],
    ids=["primary key", "not null", "check", "datatype mismatch"],
)
def test_sqlite_rejecting_a_row_is_about_the_record(sqlite_engine: sa.Engine, statement: str) -> None:
    assert about_the_record(failure(sqlite_engine, statement))


def test_a_sqlite_trigger_rejecting_a_row_is_about_the_record(sqlite_engine: sa.Engine) -> None:
    trigger = POISON_TRIGGER["sqlite"].replace("ON messages", "ON t").replace("NEW.payload", "NEW.v")
    error = failure(sqlite_engine, trigger, INSERT.format(id=2, v="'\"poison\"'"))
    assert error.orig.sqlite_errorname == "SQLITE_CONSTRAINT_TRIGGER" and about_the_record(error)


def test_a_full_sqlite_database_is_not_about_the_record(sqlite_engine: sa.Engine) -> None:
    """SQLITE_FULL, as on a full disk: here the page count is capped instead of the filesystem."""
    big = "'" + "x" * 100_000 + "'"
    error = failure(sqlite_engine, "PRAGMA max_page_count = 2", INSERT.format(id=2, v=big))
    assert error.orig.sqlite_errorname == "SQLITE_FULL" and not about_the_record(error)


def test_a_read_only_sqlite_database_is_not_about_the_record(sqlite_engine: sa.Engine, tmp_path: Path) -> None:
    read_only = sa.create_engine(f"sqlite:///file:{tmp_path / 'classify.db'}?mode=ro&uri=true")
    error = failure(read_only, INSERT.format(id=2, v="'two'"))
    assert error.orig.sqlite_errorname == "SQLITE_READONLY" and not about_the_record(error)


def test_a_locked_sqlite_database_is_not_about_the_record(sqlite_engine: sa.Engine, tmp_path: Path) -> None:
    impatient = sa.create_engine(f"sqlite:///{tmp_path / 'classify.db'}", connect_args={"timeout": 0})
    with sqlite_engine.connect() as holder:
        holder.exec_driver_sql("BEGIN EXCLUSIVE")
        error = failure(impatient, INSERT.format(id=2, v="'two'"))
        holder.rollback()
    assert error.orig.sqlite_errorname == "SQLITE_BUSY" and not about_the_record(error)


@pytest.mark.parametrize(
    "error",
    [
        KeyError("received_at"),
        RuntimeError("Working outside of application context."),
        ConnectionRefusedError(111, "Connection refused"),
        sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
    ],
    ids=["our code", "our configuration", "no connection", "pool timeout"],
)
def test_an_error_the_database_did_not_report_is_not_about_the_record(error: Exception) -> None:
    assert not about_the_record(error)


@pytest.fixture
def mysql_table(mysql_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS t")
        conn.exec_driver_sql(
            "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(8) NOT NULL, n TINYINT, CHECK (v <> 'bad')) "
            "CHARACTER SET utf8mb4"
        )
        conn.exec_driver_sql("INSERT INTO t (id, v) VALUES (1, 'one')")
    yield engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS t")
    engine.dispose()


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("statement", "errno"),
    [
        (INSERT.format(id=1, v="'dup'"), 1062),
        (INSERT.format(id=2, v="NULL"), 1048),
        (INSERT.format(id=2, v="'bad'"), 4025),
        (INSERT.format(id=2, v="'far too long'"), 1406),
        ("INSERT INTO t (id, v, n) VALUES (2, 'x', 1000)", 1264),
        ("INSERT INTO t (id, v, n) VALUES (2, 'x', 'many')", 1366),
    ],
    ids=["duplicate", "null", "check", "too long", "out of range", "incorrect value"],
)
def test_mariadb_rejecting_a_row_is_about_the_record(mysql_table: sa.Engine, statement: str, errno: int) -> None:
    error = failure(mysql_table, statement)
    assert error.orig.args[0] == errno and about_the_record(error)


@pytest.mark.mysql
def test_a_mariadb_trigger_signal_is_about_the_record(mysql_table: sa.Engine) -> None:
    trigger = POISON_TRIGGER["mysql"].replace("ON messages", "ON t").replace("NEW.payload", "NEW.v")
    error = failure(mysql_table, trigger, INSERT.format(id=2, v="'\"poison\"'"))
    assert error.orig.args[0] == 1644 and about_the_record(error)


@pytest.mark.mysql
def test_a_mariadb_denying_the_write_or_gone_is_not_about_the_record(mysql_table: sa.Engine, mysql_url: str) -> None:
    gone = sa.create_engine(make_url(mysql_url).set(host="127.0.0.1", port=1))
    with pytest.raises(sa.exc.DBAPIError) as raised, gone.connect():
        pass
    assert raised.value.orig.args[0] == 2003 and not about_the_record(raised.value)
    with mariadb_user(mysql_url, "SELECT") as url:
        engine = sa.create_engine(url)
        error = failure(engine, INSERT.format(id=2, v="'two'"))
        engine.dispose()
    assert error.orig.args[0] == 1142 and not about_the_record(error)
