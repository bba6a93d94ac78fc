"""Process and port helpers shared by the tests: real servers on free ports."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import redis
import requests
import sqlalchemy as sa
from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from embedded_redis import server_command  # noqa: E402

_HANDED_OUT: set[int] = set()


def port_claims(run: str) -> Path:
    """The folder where the workers of pytest-xdist run ``run`` claim ports (removed when the run ends)."""
    return Path(tempfile.gettempdir()) / f"test-ports-{run}"


def _claim_across_workers(port: int) -> bool:
    """Under pytest-xdist, claim ``port`` for this run's workers alone (a file created exclusively)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return True
    claims = port_claims(run)
    claims.mkdir(exist_ok=True)
    try:
        (claims / str(port)).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def free_port() -> int:
    """Return a TCP port that was free a moment ago (bind to port 0), never one already handed out.

    The kernel may give the same ephemeral port to two binds in a row once the
    first is closed: two services of one stack would then get one port, the
    second failing to bind while health checks reach the first. The same holds
    between the two workers of ``scripts/test.sh``, which claim ports in a
    folder they share.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT and _claim_across_workers(port):
            _HANDED_OUT.add(port)
            return port


def wait_until(
    check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true, or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - the thing we wait for may not be up yet
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Service:
    """A real child process (its own process group) with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def signal(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        stop_all([self], timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process:
            self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(services: Sequence[Service], timeout: float = 10.0) -> None:
    """SIGTERM every running service at once, then wait for each (SIGKILL past ``timeout``).

    As honcho and compose stop a stack: each still shuts down gracefully,
    but their shutdowns overlap instead of adding up.
    """
    running = [s for s in services if s.process and s.process.poll() is None]
    for service in running:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in running:
        assert service.process is not None
        try:
            service.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.signal(signal.SIGKILL)
            service.process.wait(5)


class RedisServer(Service):
    """The bundled redis-server on a free port, with AOF in a private directory."""

    def __init__(self, directory: Path, appendfsync: str = "everysec", port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__(
            f"redis-{self.port}", server_command(self.port, directory, appendfsync), dict(os.environ), directory
        )

    def start(self) -> RedisServer:
        super().start()
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: client.ping(), what=f"redis on {self.port}")
        return self


def python_env(extra: dict[str, str]) -> dict[str, str]:
    """Environment for a service child: the venv on PATH, our settings on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLALCHEMY_", "REDIS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def serve(name: str, process: str, env: dict[str, str], log_dir: Path, *args: str) -> Service:
    """A service started as the Procfile and compose start it: ``python -m relay.serve PROCESS``."""
    return Service(name, [sys.executable, "-m", "relay.serve", process, *args], env, log_dir)


def gunicorn(name: str, process: str, port: int, env: dict[str, str], log_dir: Path, workers: int = 1) -> Service:
    """An API (``ingestion_api`` or ``list_api``) under gunicorn on ``port``."""
    port_setting = "INGESTION_API_PORT" if process == "ingestion_api" else "LIST_API_PORT"
    settings = {"BIND_HOST": "127.0.0.1", port_setting: str(port), "WEB_WORKERS": str(workers)}
    return serve(name, process, {**env, **settings}, log_dir)


def celery_worker(name: str, env: dict[str, str], log_dir: Path, concurrency: int = 2, mingle: bool = False) -> Service:
    """A real Celery worker on the persistence queue (without mingle's second at start-up, unless asked)."""
    settings = {"WORKER_CONCURRENCY": str(concurrency), "WORKER_HOSTNAME": f"{name}@%h"}
    return serve(
        name, "worker", {**env, **settings}, log_dir, "--without-gossip", *([] if mingle else ["--without-mingle"])
    )


def wait_http_ok(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200."""
    wait_until(lambda: requests.get(url, timeout=1).status_code == 200, timeout, what=url)


SERVICES = ("ingestion_api", "list_api")


def in_process_ingestion_app(redis_url: str, **settings: object) -> Flask:
    """An ingestion API inside the test process, settings by field name.

    Sending before the answer (no gathering): tests look at the queue as soon
    as the answer is in, and a sender thread left behind by one test's app
    would send its task messages into the next test's Redis.
    """
    import ingestion_api

    return ingestion_api.create_app({"redis_url": redis_url, "ingest_send_gather_seconds": 0, **settings})


def openapi_document(service: str, **config: object) -> dict:
    """The OpenAPI document an app of ``service`` serves, built with ``config`` (no server is contacted)."""
    import ingestion_api
    import list_api

    if service == "ingestion_api":
        app = ingestion_api.create_app({"redis_url": "redis://127.0.0.1:1/0", **config})
    elif service == "list_api":
        app = list_api.create_app({"sqlalchemy_database_uri": "sqlite://", **config})
    else:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return app.test_client().get("/openapi.json").get_json()


# A trigger that makes the database reject any message whose payload has a "poison" key.
POISON_TRIGGER = {
    "sqlite": (
        "CREATE TRIGGER reject_poison BEFORE INSERT ON messages WHEN NEW.payload LIKE '%\"poison\"%' "
        "BEGIN SELECT RAISE(ABORT, 'poison rejected'); END"
    ),
    "mysql": (  # PyMySQL applies %-formatting, hence %%
        "CREATE TRIGGER reject_poison BEFORE INSERT ON messages FOR EACH ROW "
        "IF NEW.payload LIKE '%%\"poison\"%%' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poison rejected'; END IF"
    ),
}


def clear_database(url: str) -> None:
    """Empty the messages, channels and channel_deltas tables (the database stays migrated)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM messages")
        conn.exec_driver_sql("DELETE FROM channels")
        conn.exec_driver_sql("DELETE FROM channel_deltas")
    engine.dispose()


def take_tasks(broker: str | redis.Redis, queue: str = "persist") -> list[list[dict]]:
    """Take every task message off ``queue``, oldest first, and return each one's records argument.

    Through kombu's public ``SimpleQueue`` (never its storage layout); each
    message must call the persistence task with the records as its only argument.
    """
    from kombu import Connection

    from relay.broker.contract import PERSIST_TASK

    if isinstance(broker, redis.Redis):
        where = broker.connection_pool.connection_kwargs
        broker = f"redis://{where['host']}:{where['port']}/{where.get('db', 0)}"
    tasks = []
    with Connection(broker) as connection, connection.SimpleQueue(queue) as simple:
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                return tasks
            assert message.headers["task"] == PERSIST_TASK
            args, kwargs, _embed = message.payload
            assert kwargs == {} and len(args) == 1
            message.ack()
            tasks.append(args[0])


def persist_pending(redis_url: str, queue: str = "persist"):
    """The pending set of ``queue``, sending as the services do (the persistence queue's Celery app)."""
    import functools

    from relay.broker.contract import make_celery, send_records
    from relay.broker.pending import Pending
    from relay.settings import load_settings

    send = functools.partial(send_records, make_celery(load_settings(redis_url=redis_url, persist_queue=queue)), queue)
    return Pending(redis.Redis.from_url(redis_url), queue, send)


# A Lua loop that holds Redis (single-threaded) for ARGV[1] microseconds: every other client waits.
_BUSY = """
local stop = tonumber(redis.call('TIME')[1]) * 1000000 + tonumber(redis.call('TIME')[2]) + tonumber(ARGV[1])
while tonumber(redis.call('TIME')[1]) * 1000000 + tonumber(redis.call('TIME')[2]) < stop do end
return 1
"""


@contextlib.contextmanager
def redis_busy(url: str, seconds: float) -> Iterator[None]:
    """Keep the Redis at ``url`` busy for ``seconds``; enter once it is (a 50 ms ping has timed out).

    The loop runs from a thread of its own; leaving waits for it to end.
    """
    client = redis.Redis.from_url(url)
    sha = client.script_load(_BUSY)
    loop = threading.Thread(target=client.evalsha, args=(sha, 0, int(seconds * 1_000_000)), daemon=True)
    loop.start()
    probe = redis.Redis.from_url(url, socket_timeout=0.05)
    try:
        wait_until(lambda: not _answers(probe), timeout=5, interval=0.01, what="Redis to be busy")
        yield
    finally:
        loop.join(seconds + 5)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.TimeoutError:
        return False


@contextlib.contextmanager
def mariadb_user(url: str, privileges: str) -> Iterator[str]:
    """A MariaDB user of its own with ``privileges`` on ``url``'s database (no SUPER); yield its URL, then drop it."""
    from sqlalchemy.engine import make_url

    server = make_url(url)
    name, password = f"relay_{os.urandom(4).hex()}", os.urandom(8).hex()
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE USER '{name}'@'%%' IDENTIFIED BY '{password}'")
        conn.exec_driver_sql(f"GRANT {privileges} ON `{server.database}`.* TO '{name}'@'%%'")
    try:
        yield server.set(username=name, password=password).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{name}'@'%%'")
        admin.dispose()


# Positions handed out by place(): unique over the session, as the accept script's counters are over a database.
_next_position = itertools.count(1)
_last_offsets: collections.Counter[str] = collections.Counter()


def place(records: list[dict]) -> list[dict]:
    """Give records made with ``make_record`` an offset and a position, as the accept script would; return them.

    For tests of the worker and the database without the ingestion API: each
    call continues the session's counters (positions never repeat; each
    channel's offsets go on from its last one).
    """
    from relay.records import record_channel

    for record in records:
        channel = record_channel(record)
        _last_offsets[channel] += 1
        record["offset"], record["position"] = _last_offsets[channel], next(_next_position)
    return records


@contextlib.contextmanager
def mariadb_database(server_url: str, prefix: str) -> Iterator[str]:
    """A MariaDB database of its own on the server at ``server_url`` (utf8mb4, binary collation), dropped after.

    Yields its URL, not migrated.
    """
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield server.set(database=name).update_query_dict({"charset": "utf8mb4"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def fill_redis_to(client: redis.Redis, share: float) -> None:
    """Set ``maxmemory`` so that Redis is ``share`` full (0 < share < 1): past a mark below it, short of the limit.

    4 MB of ballast first makes the test's data most of Redis' memory, so the few hundred kB
    the server's own buffers move by (clients' query buffers, a previous test's freed data)
    cannot carry it back across the mark between this read and the one under test.
    """
    client.set("ballast", b"x" * 4_000_000)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", int(used / share))
