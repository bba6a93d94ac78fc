"""Fixtures of the shared layers: a real Redis server, real SQLite and MariaDB databases, app factories.

The tests mirror the package: ``tests/<process>/`` for each process folder
of ``relay/`` (each with a ``conftest.py`` giving its app and client),
``tests/web/`` and ``tests/broker/`` for those layers, ``tests/test_*.py``
for the modules at the top of ``relay/``, and ``tests/system/`` for tests of
the whole stack as real processes (its ``conftest.py`` starts it).

SQLite always runs. MariaDB/MySQL runs when ``TEST_MYSQL_URL`` is set (CI
sets it); each test session gets its own freshly migrated database there.
With ``CI`` set, a skipped test counts as a failure: in CI nothing may be
skipped, so a missing dependency fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import flask_migrate
import pytest
import redis
from flask import Flask

import list_api
from relay import storage
from tests.helpers import ROOT, RedisServer, clear_database, in_process_ingestion_app, mariadb_database, port_claims

MYSQL_URL = os.environ.get("TEST_MYSQL_URL")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {reason}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On pytest-xdist's controller, once every worker is done: remove the run's port claims."""
    run = getattr(session.config.option, "testrunuid", None)
    if run and not hasattr(session.config, "workerinput"):
        shutil.rmtree(port_claims(run), ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean Redis database on the session's real server, its position counters seeded for an empty database.

    As a worker seeds them at start-up (relay.broker.positions); the tests
    that need them unseeded delete ``persist:positions``.
    """
    import redis

    from relay.broker.positions import Positions

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    Positions(client, "persist").seed(0, {})
    return redis_server.url


@pytest.fixture
def redis_config_restored(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the clean Redis whose ``maxmemory`` and ``maxmemory-policy`` are put back afterwards."""
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("maxmemory*")
    yield client
    client.config_set("maxmemory", before["maxmemory"])
    client.config_set("maxmemory-policy", before["maxmemory-policy"])


def migrate(url: str) -> None:
    """Run the committed migrations (``flask db upgrade``) against ``url``."""
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        storage.db.engine.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'messages.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    if not MYSQL_URL:
        pytest.skip("TEST_MYSQL_URL is not set (e.g. mysql+pymysql://root@127.0.0.1:3306/test)")
    with mariadb_database(MYSQL_URL, "msgtest") as url:
        migrate(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty, migrated database: SQLite, then MariaDB when configured."""
    url = request.getfixturevalue(f"{request.param}_url")
    clear_database(url)
    return url


@pytest.fixture
def db_app(database_url: str) -> Iterator[Flask]:
    """The worker's database app on a clean database."""
    app = storage.create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})
    yield app
    with app.app_context():
        storage.db.engine.dispose()


@pytest.fixture
def make_ingestion_app(redis_url: str) -> Callable[..., Flask]:
    """Make ingestion APIs on the clean Redis; settings by field name (``redis_url`` too, to point elsewhere)."""

    def make(**settings: object) -> Flask:
        return in_process_ingestion_app(**{"redis_url": redis_url, **settings})

    return make


@pytest.fixture
def make_list_app(database_url: str, redis_url: str) -> Iterator[Callable[..., Flask]]:
    """Make list APIs on the clean database, settings by field name; their connections are closed afterwards.

    They count failed token checks on the clean Redis, never on one a developer runs on the default port.
    """
    apps: list[Flask] = []

    def make(**settings: object) -> Flask:
        base = {"sqlalchemy_database_uri": database_url, "redis_url": redis_url, "secret_key": "test-secret"}
        app = list_api.create_app({**base, **settings})
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            storage.db.engine.dispose()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
