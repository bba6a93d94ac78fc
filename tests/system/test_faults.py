"""Fault tests: load running, a fault injected, the fault healed, then count.

Every test keeps the id of each message the ingestion API acknowledged (a
202), walks the list API with cursors once the system has settled, and
asserts that no acknowledged message is missing and none is stored twice.
Each prints one summary line (run pytest with ``-s`` to see them)::

    FAULT <name>: accepted=N stored=N lost=N duplicated=N

Only external behaviour is used: HTTP answers, the listing, websocket frames
as a browser shows them, process signals, and a TCP proxy between the worker
and the database. Run them alone with ``pytest -m faults -s``.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kombu
import pytest
import redis
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from relay.broker.contract import make_celery
from relay.broker.positions import Positions
from relay.settings import load_settings
from tests.helpers import (
    POISON_TRIGGER,
    ROOT,
    RedisServer,
    clear_database,
    persist_pending,
    python_env,
    wait_until,
)
from tests.stack import Listing, Stack, running_stack, start_worker
from tests.system.test_browser import assert_exactly, shown_ids
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

# Tasks of a dead worker come back after the visibility timeout: keep it short so the tests are quick.
QUICK_REDELIVERY = {"CELERY_VISIBILITY_TIMEOUT": "5"}
# No gathering either: each write leaves as its own task message, so a backlog is hundreds of them
# (for the kills to land among), not the dozen the sender would gather under that load.
ONE_TASK_PER_WRITE = {**QUICK_REDELIVERY, "INGEST_SEND_GATHER_SECONDS": "0"}
# How long a test waits, once the fault is healed, for every acknowledged message to be stored.
SETTLE_SECONDS = 30.0


@dataclass
class Load:
    """Clients posting single messages and small batches from threads, keeping every answer.

    ``accepted`` holds the id of every message acknowledged with a 202;
    ``unanswered`` counts the messages sent in requests that got a 5xx or no
    answer at all (the API may or may not have queued those).
    """

    url: str
    clients: int = 4
    batch_every: int = 5  # every n-th request of a client is a batch (0: singles only)
    batch_size: int = 10
    pause: float = 0.0  # seconds each client waits between requests
    accepted: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    unanswered: int = 0
    slowest_refusal: float = 0.0  # seconds taken by the slowest 503
    refusals_without_retry_after: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def _client(self, number: int) -> None:
        session = requests.Session()
        sent = 0
        while not self._stop.is_set():
            sent += 1
            batch = self.batch_every and sent % self.batch_every == 0
            payload = {"client": number, "n": sent, "text": "héllo 🎉"}
            size = self.batch_size if batch else 1
            body = [{**payload, "i": i} for i in range(size)] if batch else payload
            started = time.monotonic()
            try:
                response = session.post(f"{self.url}/dummy{'/batch' if batch else ''}", json=body, timeout=5)
            except requests.RequestException:
                with self._lock:
                    self.statuses["no answer"] += 1
                    self.unanswered += size
                time.sleep(0.05)
                continue
            elapsed = time.monotonic() - started
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code == 202:
                    answer = response.json()
                    self.accepted += answer["ids"] if batch else [answer["id"]]
                elif response.status_code >= 500:
                    self.unanswered += size
                if response.status_code == 503:
                    self.slowest_refusal = max(self.slowest_refusal, elapsed)
                    self.refusals_without_retry_after += "Retry-After" not in response.headers
            if response.status_code != 202:
                time.sleep(0.05)
            elif self.pause:
                time.sleep(self.pause)


@dataclass
class Tally:
    name: str
    accepted: int
    stored: int
    lost: list[str]  # acknowledged, not stored when the test stopped waiting
    duplicated: int
    unacknowledged: int  # stored, but never acknowledged with a 202 (the client saw a 503 or nothing)
    still_in_redis: int  # of ``lost``: still queued, unacknowledged or dead-lettered in Redis (late, not gone)

    @property
    def line(self) -> str:
        line = (
            f"FAULT {self.name}: accepted={self.accepted} stored={self.stored} "
            f"lost={len(self.lost)} duplicated={self.duplicated}"
        )
        return f"{line} (of the lost, still in Redis: {self.still_in_redis})" if self.lost else line

    @property
    def gone(self) -> int:
        """Acknowledged messages neither stored nor anywhere in Redis: lost for good."""
        return len(self.lost) - self.still_in_redis

    def assert_exactly_once(self) -> None:
        assert not self.lost and not self.duplicated, (
            f"{self.line}; {len(self.lost)} acknowledged message(s) not stored within the wait, "
            f"{self.still_in_redis} of them still in Redis; first: {self.lost[:3]}"
        )


_MESSAGE_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


# The Redis reads that show where an unstored message still is: the pending records (every accepted
# record until a worker has handled it; the reconciler sends them again) and the dead letters.
WHERE_MESSAGES_WAIT = (
    ("HVALS", "persist:pending:records"),
    ("LRANGE", "dead_letters", "0", "-1"),
)


def in_flight(redis_url: str) -> int:
    """Task messages workers hold, running or reserved, as ``celery inspect`` reports them."""
    inspect = make_celery(load_settings(redis_url=redis_url)).control.inspect(timeout=1.0)
    held = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
    return sum(len(tasks) for tasks in held)


def ids_in(blobs: Iterable[bytes]) -> set[str]:
    return {match.decode() for blob in blobs for match in _MESSAGE_ID.findall(blob)}


def ids_in_redis(redis_url: str) -> set[str]:
    """Message ids anywhere a message waits in Redis (``WHERE_MESSAGES_WAIT``)."""
    client = redis.Redis.from_url(redis_url)
    return ids_in(blob for command in WHERE_MESSAGES_WAIT for blob in client.execute_command(*command))


def tally(
    name: str,
    accepted: list[str],
    stored_ids: list[str],
    redis_url: str | None = None,
    in_redis: Callable[[], set[str]] | None = None,
) -> Tally:
    """Compare acknowledged ids with stored ones, and print the summary line.

    ``in_redis`` (default: read ``redis_url``) gives the ids still waiting in
    Redis, asked only when some are missing.
    """
    if in_redis is None and redis_url:
        in_redis = lambda: ids_in_redis(redis_url)  # noqa: E731
    counts = Counter(stored_ids)
    wanted = set(accepted)
    assert len(wanted) == len(accepted), "the API handed out an id twice"
    lost = sorted(wanted - counts.keys())
    result = Tally(
        name,
        accepted=len(wanted),
        stored=len(stored_ids),
        lost=lost,
        duplicated=sum(n - 1 for n in counts.values()),
        unacknowledged=len(counts.keys() - wanted),
        still_in_redis=len(set(lost) & in_redis()) if lost and in_redis else 0,
    )
    print(f"\n{result.line}")
    return result


def settle(stack: Listing, accepted: list[str], timeout: float, quiet: float = 3.0) -> list[str]:
    """Wait until every accepted id is listed and the listing has stopped growing; return the listed ids.

    Returns what is listed when ``timeout`` runs out, so the caller can count
    what is missing rather than only time out.
    """
    wanted = set(accepted)
    deadline = time.monotonic() + timeout
    last_count, changed_at = -1, time.monotonic()
    while True:
        try:
            ids = [m["id"] for m in stack.listed()]
        except (requests.RequestException, ValueError):
            ids = []
        now = time.monotonic()
        if len(ids) != last_count:
            last_count, changed_at = len(ids), now
        if (wanted <= set(ids) and now - changed_at >= quiet) or now > deadline:
            return ids
        time.sleep(0.5)


def stored_count(stack: Stack) -> int:
    return len(stack.listed())


def test_worker_killed_while_draining_a_backlog_stores_every_message_once(
    sqlite_url: str, redis_url: str, log_dir: Path
) -> None:
    """SIGKILL the whole worker (pool children too) amid thousands of queued messages; restart it at once."""
    clear_database(sqlite_url)
    broker = redis.Redis.from_url(redis_url)
    with running_stack(sqlite_url, redis_url, log_dir, env=ONE_TASK_PER_WRITE, with_worker=False) as stack:
        load = Load(stack.ingest_url, clients=6, batch_every=4, batch_size=25)
        with load.running():
            wait_until(lambda: load.count() >= 4000, timeout=60, what="a backlog of 4000 messages")
        backlog = broker.llen("persist")
        start_worker(stack)
        load.clients, load.pause = 2, 0.01  # keep posting, slower than the worker drains
        with load.running():
            wait_until(lambda: broker.llen("persist") < backlog * 0.7, timeout=60, what="the worker draining")
            held = in_flight(redis_url)  # delivered to the worker, not yet acknowledged
            stack.services["worker"].kill()
            killed_at = time.monotonic()
            time.sleep(2)
            start_worker(stack)  # as a supervisor would: at once
            time.sleep(2)
        assert held > 0, "the kill should hit task messages in progress"
        stored = settle(stack, load.accepted, timeout=SETTLE_SECONDS)
        result = tally("worker SIGKILL mid-backlog", load.accepted, stored, redis_url)
        print(
            f"killed with {held} task message(s) in flight and {backlog} queued before; "
            f"settled {time.monotonic() - killed_at:.0f}s after the kill; statuses {dict(load.statuses)}"
        )
        result.assert_exactly_once()
        assert load.statuses.keys() == {202}, load.statuses


def test_a_worker_killed_between_popping_a_task_message_and_recording_it_loses_nothing(
    sqlite_url: str, redis_url: str, log_dir: Path
) -> None:
    """kombu's Redis transport pops a message (BRPOP), then records it as unacknowledged: a kill between
    the two loses that message from the broker (kombu#305, #1836).

    Reproduced exactly, with kombu's public API: a consumer takes task
    messages off the queue without acknowledgement bookkeeping (``no_ack``),
    then "dies" without running them. A worker started afterwards must store
    every accepted message once: the lost ones come back from the pending set.
    """
    clear_database(sqlite_url)
    with running_stack(sqlite_url, redis_url, log_dir, env=ONE_TASK_PER_WRITE, with_worker=False) as stack:
        load = Load(stack.ingest_url, clients=4, batch_every=4, batch_size=25)
        with load.running():
            wait_until(lambda: load.count() >= 500, timeout=60, what="a backlog of 500 messages")
        lost = 0
        with kombu.Connection(redis_url) as connection, connection.SimpleQueue("persist", no_ack=True) as queue:
            assert queue.qsize() >= 5, "too few task messages to lose five"
            for _ in range(5):  # popped and gone: nothing records them anywhere in the broker
                lost += len(queue.get(block=False).payload[0][0])
        start_worker(stack)
        started = time.monotonic()
        grace = float(load_settings().pending_grace_seconds)
        stored = settle(stack, load.accepted, timeout=grace * 2 + SETTLE_SECONDS)
        took = time.monotonic() - started
        result = tally("worker killed between pop and bookkeeping", load.accepted, stored, redis_url)
        print(
            f"{lost} record(s) in 5 popped-and-lost task messages; every message stored {took:.1f} s after the restart"
        )
        assert lost >= 5
        result.assert_exactly_once()


@dataclass
class Outage:
    """What clients saw while Redis was down."""

    probes: list[tuple[int, str | None, float]] = field(default_factory=list)  # status, Retry-After, seconds
    healthz: list[int] = field(default_factory=list)


def probe_while_down(stack: Stack, outage: Outage, seconds: float) -> None:
    """Time single and batch posts and health checks against the API while Redis is gone."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for path, body in (("/dummy", {"probe": 1}), ("/dummy/batch", [{"probe": 2}])):
            started = time.monotonic()
            response = requests.post(f"{stack.ingest_url}{path}", json=body, timeout=5)
            outage.probes.append(
                (response.status_code, response.headers.get("Retry-After"), time.monotonic() - started)
            )
            assert response.json()["error"] == "queue_unavailable", response.text
        outage.healthz.append(requests.get(f"{stack.ingest_url}/healthz", timeout=5).status_code)
        time.sleep(0.2)


def redis_crash(
    tmp_path: Path, sqlite_url: str, log_dir: Path, appendfsync: str, consuming: bool = True
) -> tuple[Tally, Load, Outage, int]:
    """Post under load, SIGKILL Redis, probe the API, restart Redis on the same port and files, count.

    With ``consuming=False`` the worker starts only after the restart, so
    what is missing then was lost by Redis itself (its fsync policy), not in
    a hand-over to the worker. Returns the tally, the load, what clients saw
    during the outage, and how many acknowledged messages Redis no longer
    held right after the restart (counted only when not consuming).
    """
    clear_database(sqlite_url)
    directory = tmp_path / f"redis-{appendfsync}"
    server = RedisServer(directory, appendfsync=appendfsync).start()
    Positions(redis.Redis.from_url(server.url), "persist").seed(0, {})  # the worker may start only later
    outage = Outage()
    try:
        with running_stack(sqlite_url, server.url, log_dir, env=QUICK_REDELIVERY, with_worker=consuming) as stack:
            load = Load(stack.ingest_url, clients=4)
            with load.running():
                wait_until(lambda: load.count() >= 1500, timeout=60, what="load before the crash")
                at_kill = load.count()
                server.kill()
                killed_at = time.monotonic()
                probe_while_down(stack, outage, seconds=3)
                server = RedisServer(directory, appendfsync=appendfsync, port=server.port).start()
                wait_until(lambda: load.count() >= at_kill + 500, timeout=30, what="202s after the restart")
            missing_from_redis = 0 if consuming else len(set(load.accepted) - ids_in_redis(server.url))
            if not consuming:
                start_worker(stack)
            stored = settle(stack, load.accepted, timeout=SETTLE_SECONDS)
            result = tally(f"redis SIGKILL+restart (appendfsync {appendfsync})", load.accepted, stored, server.url)
            print(
                f"{at_kill} acknowledged before the kill; settled {time.monotonic() - killed_at:.0f}s after it; "
                f"statuses {dict(load.statuses)}; stored without a 202: {result.unacknowledged} "
                f"(of {load.unanswered} sent without a definite answer)"
            )
            return result, load, outage, missing_from_redis
    finally:
        server.stop()


def assert_refused_quickly(load: Load, outage: Outage) -> None:
    assert outage.probes, "no probe ran while Redis was down"
    assert all(status == 503 and retry == "1" for status, retry, _ in outage.probes), outage.probes
    slowest = max(seconds for _, _, seconds in outage.probes)
    assert slowest < 1.0, f"a 503 took {slowest:.2f}s"
    assert set(outage.healthz) == {503}, outage.healthz
    assert load.statuses[503] > 0 and load.slowest_refusal < 1.0, (load.statuses, load.slowest_refusal)
    assert load.refusals_without_retry_after == 0


def test_redis_crash_with_appendfsync_always_loses_no_accepted_message(
    tmp_path: Path, sqlite_url: str, log_dir: Path
) -> None:
    result, load, outage, _ = redis_crash(tmp_path, sqlite_url, log_dir, "always")
    assert_refused_quickly(load, outage)
    result.assert_exactly_once()
    assert result.unacknowledged <= load.unanswered


def test_redis_crash_with_appendfsync_everysec_is_measured(tmp_path: Path, sqlite_url: str, log_dir: Path) -> None:
    """Measure what ``everysec`` (the compose default) loses across kill -9; only duplicates fail the test.

    The worker is started after the restart, so the count is Redis's own
    loss. A SIGKILL of the process does not lose what Redis already wrote to
    the kernel: ``everysec`` can only lose the last second or two of writes
    on an OS crash or power loss, which a test on one machine cannot cause.
    """
    result, load, outage, missing = redis_crash(tmp_path, sqlite_url, log_dir, "everysec", consuming=False)
    print(f"everysec across kill -9: {missing} of {result.accepted} acknowledged messages missing from Redis")
    assert_refused_quickly(load, outage)
    assert result.duplicated == 0
    assert result.unacknowledged <= load.unanswered


def test_database_outage_loses_and_duplicates_nothing(mysql_url: str, redis_url: str, log_dir: Path) -> None:
    """Cut the worker's MariaDB connections for 15 s (3 visibility timeouts) while posting; the backlog drains."""
    clear_database(mysql_url)
    server = make_url(mysql_url)
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 3306).start()
    through_proxy = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with running_stack(
            mysql_url,
            redis_url,
            log_dir,
            env=QUICK_REDELIVERY,
            worker_env={"SQLALCHEMY_DATABASE_URI": through_proxy},
        ) as stack:
            load = Load(stack.ingest_url, clients=2, pause=0.01)
            with load.running():
                wait_until(lambda: stored_count(stack) >= 200, timeout=60, what="messages stored before the cut")
                assert proxy.open_connections > 0, "the worker should hold database connections through the proxy"
                proxy.cut()
                time.sleep(2)  # a commit already on its way may still land
                stored_at_cut, accepted_at_cut = stored_count(stack), load.count()
                time.sleep(13)
                stored_during, accepted_during = stored_count(stack), load.count() - accepted_at_cut
                proxy.restore()
                restored_at = time.monotonic()
                time.sleep(3)
            assert stored_during == stored_at_cut, "the cut should stop the worker's writes"
            assert accepted_during > 250, "the API should keep accepting while the database is down"
            stored = settle(stack, load.accepted, timeout=SETTLE_SECONDS)
            result = tally("database cut for 15 s", load.accepted, stored, redis_url)
            print(
                f"accepted during the cut: {accepted_during}; "
                f"settled {time.monotonic() - restored_at:.0f}s after the restore; statuses {dict(load.statuses)}"
            )
            result.assert_exactly_once()
            assert load.statuses.keys() == {202}, load.statuses
    finally:
        proxy.stop()


def test_live_page_shows_every_message_once_across_wsserver_and_redis_restarts(
    browser, tmp_path: Path, sqlite_url: str, log_dir: Path
) -> None:
    """SIGKILL and restart the wsserver, then Redis, while the page is open and messages keep coming."""
    clear_database(sqlite_url)
    directory = tmp_path / "redis"
    server = RedisServer(directory, appendfsync="always").start()
    try:
        with running_stack(sqlite_url, server.url, log_dir, env=QUICK_REDELIVERY, with_ws=True) as stack:
            page = browser.new_page()
            page.goto(f"{stack.list_url}/?ws={stack.ws_url}&ingest={stack.ingest_url}")
            page.wait_for_selector("#state[data-state=live]")
            load = Load(stack.ingest_url, clients=1, batch_every=0, pause=0.08)
            with load.running():
                time.sleep(2)
                stack.services["wsserver"].kill()
                page.wait_for_selector("#state[data-state=disconnected]")
                time.sleep(1)
                stack.start_wsserver()
                page.wait_for_selector("#state[data-state=live]", timeout=15_000)
                time.sleep(2)
                server.kill()
                time.sleep(2)
                server = RedisServer(directory, appendfsync="always", port=server.port).start()
                before = load.count()
                wait_until(lambda: load.count() >= before + 20, timeout=30, what="202s after the Redis restart")
            accepted = set(load.accepted)
            assert len(accepted) < 500, "the page keeps 500 messages; post fewer"
            with contextlib.suppress(AssertionError):
                wait_until(lambda: set(shown_ids(page)) >= accepted, timeout=20, what="every message on the page")
            tally("wsserver+redis SIGKILL, live page shows", load.accepted, shown_ids(page))
            assert_exactly(page, accepted)
            page.close()
            stored = settle(stack, load.accepted, timeout=SETTLE_SECONDS)
            tally("wsserver+redis SIGKILL, stored", load.accepted, stored, server.url).assert_exactly_once()
    finally:
        server.stop()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_poison_messages_are_dead_lettered_while_others_flow_then_replayed(
    database: str, request: pytest.FixtureRequest, redis_url: str, log_dir: Path
) -> None:
    """The database keeps rejecting some messages (a trigger): they go to the dead-letter list after
    their retries, every other message is stored, and scripts/dead_letters.py replays them once fixed."""
    database_url = request.getfixturevalue(f"{database}_url")
    clear_database(database_url)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(POISON_TRIGGER[engine.dialect.name])
    try:
        with running_stack(database_url, redis_url, log_dir, with_ws=False) as stack:
            accepted = {stack.post({"n": i, "kind": "poison" if i % 40 == 7 else "fine"}): i for i in range(200)}
            poison = {message_id for message_id, i in accepted.items() if i % 40 == 7}
            wait_until(lambda: len(stack.listed()) == 195, timeout=60, what="every fine message stored")
            env = python_env({"REDIS_URL": redis_url})
            script = [sys.executable, "scripts/dead_letters.py"]
            wait_until(
                lambda: (
                    subprocess.run([*script, "count"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
                    == "5\n"
                ),
                timeout=30,
                what="five dead letters",
            )
            listing = subprocess.run([*script, "list", "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
            dead = [json.loads(line) for line in listing.stdout.splitlines()]
            assert {entry["record"]["id"] for entry in dead} == poison
            assert all("poison rejected" in entry["error"] for entry in dead)
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TRIGGER reject_poison")
            replay = subprocess.run([*script, "replay", "--all"], cwd=ROOT, env=env, capture_output=True, text=True)
            assert replay.returncode == 0 and "replayed 5" in replay.stdout
            wait_until(lambda: len(stack.listed()) == 200, timeout=60, what="replayed messages stored")
            ids = [m["id"] for m in stack.listed()]
            assert len(ids) == len(set(ids)) and set(ids) == set(accepted)
            print(
                f"\nFAULT poison ({database}): accepted=200 stored=200 dead-lettered=5 replayed=5 lost=0 duplicated=0"
            )
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS reject_poison")
        engine.dispose()


class SmallFilesystem:
    """A tmpfs of ``size`` mounted at ``path`` (tests run as root, in CI too), which a test fills and grows."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def __enter__(self) -> SmallFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path))
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", "--lazy", str(self.path)], check=False)

    def fill(self) -> int:
        """Write a file until the filesystem is full; return how many bytes it took."""
        written, block = 0, b"\0" * 4096
        with contextlib.suppress(OSError), (self.path / "filler").open("wb", buffering=0) as filler:
            while True:
                written += filler.write(block)
        return written

    def grow(self, size: str) -> None:
        self._mount("-o", f"remount,size={size}", str(self.path))

    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        # No skip: in CI nothing may be skipped, and the tests run as root there as here.
        assert result.returncode == 0, f"this test needs root to mount a tmpfs (mount {' '.join(args)}): {result}"


def test_a_full_sqlite_disk_is_waited_out_and_nothing_is_dead_lettered(
    tmp_path: Path, redis_url: str, log_dir: Path
) -> None:
    """Issue 27: SQLite on a full filesystem answers SELECT 1 but cannot write. Records stay pending, none is
    dead-lettered, and once the filesystem is grown every accepted message is stored once."""
    from tests.conftest import migrate

    client = redis.Redis.from_url(redis_url)
    pending = persist_pending(redis_url)
    with SmallFilesystem(tmp_path / "disk", "8m") as disk:
        url = f"sqlite:///{disk.path / 'messages.db'}"
        migrate(url)
        with running_stack(url, redis_url, log_dir) as stack:
            before = [stack.post({"n": i, "phase": "before"}) for i in range(20)]
            wait_until(lambda: len(stack.listed()) == 20, timeout=30, what="the first messages stored")
            filled = disk.fill()
            load = Load(stack.ingest_url, clients=2, pause=0.02)
            with load.running():
                wait_until(lambda: load.count() >= 300, timeout=60, what="300 messages accepted on the full disk")
            worker_log = stack.services["worker"].log
            wait_until(
                lambda: "database cannot write" in worker_log() or client.llen("dead_letters"),
                timeout=30,
                what="the worker to meet the full disk",
            )
            time.sleep(3)  # before the fix, three attempts and dead-lettering every record took well under this
            dead_while_full = client.llen("dead_letters")
            stored_while_full, waiting = len(stack.listed()), pending.count()
            disk.grow("64m")
            grown_at = time.monotonic()
            accepted = before + load.accepted
            stored = settle(stack, accepted, timeout=SETTLE_SECONDS)
            dead = client.llen("dead_letters")
            result = tally("sqlite disk full, then grown", accepted, stored, redis_url)
            print(
                f"filler {filled // 1024} KiB; while full: stored={stored_while_full} pending={waiting} "
                f"dead-lettered={dead_while_full}; after growing: dead-lettered={dead}, "
                f"settled {time.monotonic() - grown_at:.0f}s after; statuses {dict(load.statuses)}"
            )
            assert dead_while_full == 0 and dead == 0, "a full disk is an outage, not poison"
            assert stored_while_full < len(accepted) and waiting == len(accepted) - stored_while_full, (
                "every accepted message not stored stays pending while the disk is full"
            )
            result.assert_exactly_once()
            wait_until(lambda: pending.count() == 0, timeout=10, what="nothing left pending")
            assert '"level":"ERROR"' not in worker_log(), "waiting out a full disk is no error"
