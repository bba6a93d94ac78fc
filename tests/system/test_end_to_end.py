"""End to end with real processes: gunicorn apps and a Celery worker on free ports."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from relay.broker.contract import make_celery, send_records
from relay.records import make_record, utc_now
from relay.settings import load_settings
from tests.helpers import ROOT, clear_database, wait_until
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    with running_stack(database_url, redis_url, log_dir, with_ws=False) as stack:
        yield stack


def test_every_accepted_message_is_listed_exactly_once(stack: Stack) -> None:
    session = requests.Session()

    def post(i: int) -> str:
        response = session.post(f"{stack.ingest_url}/dummy", json={"i": i, "text": f"héllo {i} 🎉"}, timeout=5)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        single_ids = list(pool.map(post, range(300)))
    batch = requests.post(f"{stack.ingest_url}/dummy/batch", json=[{"b": i} for i in range(200)], timeout=5)
    assert batch.status_code == 202
    batch_ids = batch.json()["ids"]
    repeat = [
        requests.post(f"{stack.ingest_url}/dummy", json={"k": 1}, headers={"Idempotency-Key": "e2e-1"}, timeout=5)
        for _ in range(3)
    ]
    assert [r.status_code for r in repeat] == [202, 202, 202]
    assert [r.headers.get("Idempotent-Replayed") for r in repeat] == [None, "true", "true"]
    assert {r.json()["id"] for r in repeat} == {repeat[0].json()["id"]}
    expected = set(single_ids) | set(batch_ids) | {repeat[0].json()["id"]}
    assert len(expected) == 501

    wait_until(lambda: len(stack.listed()) >= len(expected), timeout=60, what="all messages listed")
    listed = stack.listed()
    ids = [m["id"] for m in listed]
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert set(ids) == expected
    by_id = {m["id"]: m for m in listed}
    assert by_id[single_ids[7]]["payload"] == {"i": 7, "text": "héllo 7 🎉"}
    assert [by_id[i]["payload"] for i in batch_ids] == [{"b": i} for i in range(200)]
    one = requests.get(f"{stack.list_url}/messages/{batch_ids[0]}", timeout=5)
    assert one.status_code == 200 and one.json()["payload"] == {"b": 0}


def test_a_redelivered_task_stores_nothing_twice(stack: Stack) -> None:
    """The same task message delivered three times (as after a worker crash) stores each record once."""
    records = [make_record({"dup": i}, utc_now()) for i in range(5)]
    celery = make_celery(load_settings(redis_url=stack.env["REDIS_URL"]))
    for _ in range(3):
        send_records(celery, "persist", records)
    worker = stack.services["worker"]
    wait_until(lambda: worker.log().count("of 5 record(s)") >= 3, what="all three deliveries handled")
    assert worker.log().count("stored 5 of 5 record(s)") == 1 and worker.log().count("stored 0 of 5 record(s)") == 2
    listed = stack.listed()
    assert sorted(m["id"] for m in listed) == sorted(r["id"] for r in records)
    assert [orjson.loads(orjson.dumps(m["payload"])) for m in listed] == [{"dup": i} for i in range(5)]


@pytest.fixture
def live_stack(sqlite_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    clear_database(sqlite_url)
    with running_stack(sqlite_url, redis_url, log_dir, with_ws=True) as stack:
        yield stack


def test_end_to_end_script_with_three_channels_finds_each_channel_exactly_its_own(live_stack: Stack) -> None:
    """``scripts/end_to_end.py --channels 3``: each listing and each subscriber gets exactly its channel's."""
    urls = ["--ingest-url", live_stack.ingest_url, "--list-url", live_stack.list_url, "--ws-url", live_stack.ws_url]
    live_stack.post({"before": "the run, on dummy"})  # another channel's message must stay out of every check
    result = subprocess.run(
        [sys.executable, "scripts/end_to_end.py", "--channels", "3", "--count", "60", *urls],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("posted=20 listed=20 missing=0 dup=0 foreign=0") == 3
    assert result.stdout.count("subscriber: received=20 missing=0 foreign=0 dup=0") == 3
