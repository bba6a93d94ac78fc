"""The worker as monitoring tools see it: a real Flower (PyPI ``flower``) against a real worker.

Flower lists a task only from the worker's task events, so this fails if
the worker stops sending them once Flower enables them (the worker sends
none until a monitor asks) or the ingestion API stops sending real Celery
task messages.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

from relay.broker.contract import PERSIST_TASK, make_celery
from relay.settings import load_settings
from tests.helpers import Service, clear_database, free_port, wait_http_ok, wait_until
from tests.stack import running_stack

pytestmark = pytest.mark.e2e


def test_flower_lists_every_persistence_task_with_state_runtime_and_worker(
    sqlite_url: str, redis_url: str, log_dir: Path
) -> None:
    clear_database(sqlite_url)
    port = free_port()
    # No gathering: each lone message gets a task of its own, with its id as task id.
    with running_stack(sqlite_url, redis_url, log_dir, env={"INGEST_SEND_GATHER_SECONDS": "0"}) as stack:
        env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}  # Flower 2 serves its API only with auth or this
        command = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"]
        flower = Service("flower", command, env, log_dir).start()
        stack.services["flower"] = flower
        api = f"http://127.0.0.1:{port}/api"
        wait_http_ok(f"http://127.0.0.1:{port}/healthcheck")
        wait_until(lambda: requests.get(f"{api}/workers", timeout=5).json(), timeout=30, what="Flower sees the worker")

        def a_task_is_listed() -> bool:
            probe = stack.post({"probe": True})
            time.sleep(0.5)
            return probe in requests.get(f"{api}/tasks", timeout=5).json()

        # The worker sends no task events until asked: Flower asks every few seconds (--enable_events).
        wait_until(a_task_is_listed, timeout=30, what="Flower enables the worker's task events")
        singles = [stack.post({"n": i}) for i in range(5)]
        batch = requests.post(f"{stack.ingest_url}/dummy/batch", json=[{"b": i} for i in range(10)], timeout=10)
        assert batch.status_code == 202
        first_of_batch = batch.json()["ids"][0]

        def tasks() -> dict[str, dict]:
            return requests.get(f"{api}/tasks", timeout=5).json()

        def all_succeeded() -> bool:
            seen = tasks()
            batch_tasks = [t for t in seen.values() if f"10 message(s) from {first_of_batch}" in (t.get("args") or "")]
            return all(seen.get(i, {}).get("state") == "SUCCESS" for i in singles) and any(
                t["state"] == "SUCCESS" for t in batch_tasks
            )

        wait_until(all_succeeded, timeout=30, what="every persistence task listed by Flower as SUCCESS")
        listed = tasks()
        # `celery inspect stats` counts them too (it showed "total": {} with the old batching strategy).
        stats = make_celery(load_settings(redis_url=redis_url)).control.inspect(timeout=2).stats() or {}
        totals = [worker["total"].get(PERSIST_TASK, 0) for worker in stats.values()]
    for message_id in singles:  # a lone message's task carries its id as task id
        task = listed[message_id]
        assert task["name"] == PERSIST_TASK
        assert task["runtime"] > 0 and task["worker"].startswith("worker@"), task
        assert task["received"] and task["started"] and task["succeeded"], task
    assert sum(totals) >= 6, stats
    print(f"\nFlower listed {len(listed)} persistence task(s), every one SUCCESS; inspect stats total {sum(totals)}")
