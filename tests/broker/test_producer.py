"""The queue write's promise: a 202 means everything was queued, a 5xx means nothing was.

Against a real Redis server: the fenced write and its settling when an
answer is lost, the group commit withdrawing a request that waited too long,
and concurrent large batches through the ingestion API as deployed (real
gunicorn), counting what each answer really queued.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import requests

from relay.broker.connection import connect
from relay.broker.contract import make_celery, pending_keys, send_records
from relay.broker.group_commit import GroupCommit, QueueBusy
from relay.broker.producer import OutcomeUnknown, Producer
from relay.records import make_record, utc_now
from relay.settings import load_settings
from tests.helpers import clear_database, free_port, redis_busy, take_tasks
from tests.stack import Stack, running_stack


def records(count: int, size: int = 10) -> list[dict[str, str]]:
    now = utc_now()
    return [make_record({"i": i, "pad": "x" * size}, now) for i in range(count)]


def pending_ids(client: redis.Redis) -> set[str]:
    """Ids of every accepted record: those in the pending set (the write's own record of acceptance)."""
    _, records_key = pending_keys("persist")
    return {key.decode() for key in client.hkeys(records_key)}


def queued_ids(client: redis.Redis) -> set[str]:
    """Ids of every record the queue's task messages carry (taken off the queue)."""
    return {record["id"] for task in take_tasks(client) for record in task}


def make_broker(url: str, timeout: float = 5.0, **options: object) -> Producer:
    """A producer on ``url`` that sends task messages through the persistence queue's Celery app."""
    settings = load_settings(redis_url=url)
    max_bytes = options.get("message_max_bytes", settings.persist_message_max_bytes)
    send = functools.partial(send_records, make_celery(settings, timeout=timeout), "persist", max_bytes=max_bytes)
    return Producer(connect(url, timeout), "persist", "messages:live", 1000, 60, send=send, **options)


def test_a_write_fenced_off_first_never_runs(redis_url: str) -> None:
    """What settle does when an answer is lost before the write ran: the late write then changes nothing."""
    queue = make_broker(redis_url)
    fence = queue.new_fence()
    assert queue.settle(fence, time.monotonic()) is None
    with pytest.raises(redis.ConnectionError):
        queue.write(records(3), fence=fence)
    client = redis.Redis.from_url(redis_url)
    assert client.llen("persist") == 0 and client.zcard("persist:pending") == 0
    assert client.xlen("messages:live") == 0


def test_settle_reports_a_write_that_ran(redis_url: str) -> None:
    queue = make_broker(redis_url)
    fence = queue.new_fence()
    assert queue.write(records(3), fence=fence) is True
    # Live published, placed from position 1, offsets 1 to 3, nothing accepted before it still pending.
    assert queue.settle(fence, time.monotonic()) == b"ok:1:1:1,2,3:0"
    assert redis.Redis.from_url(redis_url).xlen("messages:live") == 3


def test_a_write_whose_answer_times_out_is_settled_not_guessed(redis_url: str) -> None:
    """Redis is busy past the client's read timeout, then runs the write: the answer must match what happened.

    Another client keeps Redis busy for 0.6 s; the write is sent meanwhile and
    its read times out at 0.2 s, but Redis still has it and runs it when it is
    free. Whether the write or the settling probe runs first, the answer
    (True, or an error meaning "not queued") must agree with the pending set,
    where a write records what it accepted. Before the fence, the write raised
    a timeout and was queued anyway.
    """
    client = redis.Redis.from_url(redis_url)
    queue = Producer(
        connect(redis_url, timeout=5.0, read_timeout=0.2),
        "persist",
        "messages:live",
        1000,
        60,
        probe_client=connect(redis_url, 5.0),
    )
    outcomes = Counter()
    for _ in range(4):
        batch = records(200)
        with redis_busy(redis_url, 0.6):
            try:
                accepted = queue.write(batch) is not None
            except redis.RedisError:
                accepted = False
        time.sleep(0.1)
        queued = {r["id"] for r in batch} & pending_ids(client)
        expected = {r["id"] for r in batch} if accepted else set()
        assert queued == expected, f"answered {accepted}, queued {len(queued)} of {len(batch)}"
        outcomes[accepted] += 1
    print(f"writes held past their read timeout, answered accepted/refused: {dict(outcomes)}")


def test_a_write_whose_outcome_cannot_be_found_out_says_so(redis_url: str) -> None:
    """Redis stays busy past the settling's patience: the error must say "unknown", not "nothing queued".

    Before, settling gave up with the plain timeout, which the API answers
    as ``503 queue_unavailable`` (nothing queued), though the write it had
    sent could still run, and did under load.
    """
    client = redis.Redis.from_url(redis_url)
    impatient = connect(redis_url, timeout=5.0, read_timeout=0.2)
    queue = Producer(
        impatient, "persist", "messages:live", 1000, 60, probe_client=impatient, bulk_client=impatient, busy_seconds=0.5
    )
    batch = records(50)
    with redis_busy(redis_url, 2.0):
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown):
            queue.write(batch)
        # 0.2 s for the write, then probes until 0.5 s have passed, the last one up to 0.2 s more.
        assert time.monotonic() - started < 1.5, "it should give up while Redis is still busy"
    # Whichever ran first once Redis was free, the write or the settling's claim, it ran whole or not at all.
    assert len({r["id"] for r in batch} & pending_ids(client)) in (0, len(batch))


def test_a_write_that_never_reached_redis_is_refused_at_once(redis_url: str) -> None:
    """Redis down: nothing was sent, so there is nothing to settle and the 503 comes within the connect timeout."""
    queue = make_broker(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        queue.write(records(1))
    assert time.monotonic() - started < 1.0


def test_group_commit_withdraws_a_request_that_waited_too_long() -> None:
    """A request still waiting for its turn when its time is up is taken back: nothing of it is written."""
    started, release = threading.Event(), threading.Event()
    written: list[list[str]] = []

    def slow_write(batch: list[dict[str, str]]) -> bool:
        written.append([r["id"] for r in batch])
        started.set()
        release.wait(5)
        return True

    group = GroupCommit(slow_write, wait_seconds=0.3)
    first, second = records(1), records(1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        taken = pool.submit(group.submit, first)
        assert started.wait(5)
        waiting = pool.submit(group.submit, second)
        with pytest.raises(QueueBusy):
            waiting.result(5)
        release.set()
        assert taken.result(5) is True
    time.sleep(0.1)
    assert written == [[first[0]["id"]]], "the withdrawn request was written anyway"


def test_group_commit_writes_a_lone_request_in_its_own_thread_and_merges_those_that_overlap() -> None:
    """The first request writes at once, itself; the five arriving during its write go out in one write after it."""
    started, release = threading.Event(), threading.Event()
    writes: list[tuple[str, list[str]]] = []

    def write(batch: list[dict[str, str]]) -> bool:
        writes.append((threading.current_thread().name, [r["id"] for r in batch]))
        if len(writes) == 1:
            started.set()
            release.wait(5)
        return True

    group = GroupCommit(write)
    first, later = records(1), [records(1) for _ in range(5)]
    with concurrent.futures.ThreadPoolExecutor(6, thread_name_prefix="request") as pool:
        lone = pool.submit(group.submit, first)
        assert started.wait(5)
        followers = [pool.submit(group.submit, batch) for batch in later]
        time.sleep(0.2)  # all five are waiting behind the first write
        release.set()
        assert lone.result(5) is True and all(f.result(5) is True for f in followers)
    assert len(writes) == 2, writes
    assert writes[0][1] == [first[0]["id"]] and writes[0][0].startswith("request"), "not written by its own request"
    assert sorted(writes[1][1]) == sorted(batch[0]["id"] for batch in later)


def test_group_commit_hands_a_failed_write_to_each_of_its_requests_and_goes_on() -> None:
    """A write that raises fails every request in it, and the requests waiting behind it are still written."""
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def write(batch: list[dict[str, str]]) -> bool:
        calls.append(len(batch))
        if len(calls) == 1:
            started.set()
            release.wait(5)
            raise redis.ConnectionError("Redis went away")
        return True

    group = GroupCommit(write)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failing = pool.submit(group.submit, records(1))
        assert started.wait(5)
        behind = [pool.submit(group.submit, records(1)) for _ in range(3)]
        time.sleep(0.2)
        release.set()
        with pytest.raises(redis.ConnectionError):
            failing.result(5)
        assert all(f.result(5) is True for f in behind)
        assert group.submit(records(1)) is True, "a later request after the failure"
    assert calls == [1, 3, 1]


def test_a_large_batch_becomes_task_messages_of_bounded_size(redis_url: str) -> None:
    queue = make_broker(redis_url, message_max_bytes=100_000)
    batch = records(1000, size=1000)
    queue.write(batch)
    client = redis.Redis.from_url(redis_url)
    assert client.hlen("persist:pending:records") == 1000
    tasks = take_tasks(client)
    assert len(tasks) >= 10
    assert all(sum(len(r["payload"]) for r in task) <= 100_000 for task in tasks)
    assert [r["id"] for task in tasks for r in task] == [r["id"] for r in batch], "split in order, none twice"


# --- Through the real server ------------------------------------------------------------------------


@pytest.fixture
def ingest_only(sqlite_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The ingestion API as deployed and no worker: the pending set counts exactly what was queued.

    Redis' answers time out after 50 ms, so under this load many writes lose
    their answer while Redis still runs them: the case to get right.
    """
    clear_database(sqlite_url)
    with running_stack(
        sqlite_url, redis_url, log_dir, with_worker=False, env={"REDIS_TIMEOUT_SECONDS": "0.05"}
    ) as stack:
        yield stack


@pytest.mark.e2e
def test_concurrent_large_batches_are_queued_whole_or_refused_truthfully(
    ingest_only: Stack,
) -> None:
    """24 batches of 1,000 messages (~6 MB each) and 48 of 100 (~100 KB), all at once: count what each answer queued.

    A 202 must be queued whole; a ``503 queue_unavailable`` must have queued
    nothing; only a ``503 outcome_unknown`` may have been queued or not.
    """
    # Each batch marks its messages with its number, so what each answer queued can be counted.
    bodies = [orjson.dumps([{"batch": b, "i": i, "text": "x" * 6000} for i in range(1000)]) for b in range(24)]
    bodies += [orjson.dumps([{"batch": b, "i": i, "text": "x" * 1000} for i in range(100)]) for b in range(24, 72)]
    assert max(map(len, bodies)) < 8 * 1024 * 1024

    def post(body: bytes) -> requests.Response:
        url = f"{ingest_only.ingest_url}/dummy/batch"
        return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=90)

    with concurrent.futures.ThreadPoolExecutor(72) as pool:
        answers = list(pool.map(post, bodies))
    outcomes = [(answer.status_code, answer.json().get("error")) for answer in answers]
    print(f"concurrent batches (status, error): {dict(Counter(outcomes))}")
    assert set(outcomes) <= {(202, None), (503, "queue_unavailable"), (503, "outcome_unknown")}, Counter(outcomes)
    client = redis.Redis.from_url(ingest_only.env["REDIS_URL"])
    _, records_key = pending_keys("persist")
    pending = pending_ids(client)
    per_batch = Counter(orjson.loads(orjson.loads(blob)["payload"])["batch"] for blob in client.hvals(records_key))
    for number, (body, answer, outcome) in enumerate(zip(bodies, answers, outcomes, strict=True)):
        size = len(orjson.loads(body))
        if outcome == (202, None):
            assert set(answer.json()["ids"]) <= pending and per_batch[number] == size, f"batch {number} not whole"
        elif outcome == (503, "queue_unavailable"):
            assert per_batch[number] == 0, f"batch {number} answered queue_unavailable, {per_batch[number]} queued"
        else:  # outcome_unknown: queued whole or not at all
            assert per_batch[number] in (0, size), f"batch {number}: {per_batch[number]} of {size} queued"
    # Task messages follow the write; one whose send failed (50 ms timeouts) is left to the pending set.
    assert queued_ids(client) <= pending
