"""Fault tests of Redis' memory: a Redis filled up while the workers are paused, and an evicting policy.

Each runs the stack as real processes on a Redis of its own (the test
changes its configuration) and prints the fault suite's summary line
(``tests/system/test_faults.py``). Run them with ``pytest -m faults -s``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import RedisServer, clear_database, free_port, wait_http_ok, wait_until
from tests.stack import Stack, running_stack
from tests.system.test_faults import ONE_TASK_PER_WRITE, QUICK_REDELIVERY, SETTLE_SECONDS, Load, settle, tally

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MAXMEMORY = 64 * 1024 * 1024
# A kilobyte per message, twenty per batch: Redis fills in seconds (a record is in the pending set, in
# its task message and in the live stream).
FILLER = [{"pad": "x" * 1000, "i": i} for i in range(20)]


def fill(stack: Stack, accepted: list[str]) -> requests.Response:
    """Post batches until the API refuses one; keep the accepted ids, return the refusal."""
    session = requests.Session()
    while True:
        response = session.post(f"{stack.ingest_url}/dummy/batch", json=FILLER, timeout=10)
        if response.status_code != 202:
            return response
        accepted += response.json()["ids"]


def oom_errors(client: redis.Redis) -> int:
    """Commands Redis has refused for memory (``INFO errorstats``) since it started."""
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def test_a_redis_filled_while_the_workers_are_paused_is_drained_once_they_resume(
    tmp_path: Path, sqlite_url: str, log_dir: Path
) -> None:
    """Fill Redis (maxmemory 64 MB, noeviction) with the worker SIGSTOPped, under load; SIGCONT it.

    The ingestion API stops at REDIS_MEMORY_HIGH_WATER (503 queue_full), so
    Redis never refuses the worker's own writes: every accepted message is
    stored once, with maxmemory as it was set.
    """
    clear_database(sqlite_url)
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory", MAXMEMORY)
    try:
        with running_stack(sqlite_url, server.url, log_dir, env=ONE_TASK_PER_WRITE) as stack:
            stack.post({"before": "the pause"})  # the worker is up and consuming
            worker = stack.services["worker"]
            worker.signal(signal.SIGSTOP)
            filled: list[str] = []
            load = Load(stack.ingest_url, clients=2, pause=0.01)
            with load.running():
                refusal = fill(stack, filled)
                used = int(client.info("memory")["used_memory"])
                time.sleep(2)  # small POSTs keep coming at the full Redis
                worker.signal(signal.SIGCONT)
                resumed_at = time.monotonic()
                time.sleep(8)  # and while it drains
            accepted = filled + load.accepted
            stored = settle(stack, accepted, timeout=SETTLE_SECONDS * 2)
            result = tally("redis filled, workers paused then resumed", accepted, stored, server.url)
            print(
                f"filler refused with {refusal.status_code} {refusal.text[:160]}; Redis at {used / MAXMEMORY:.0%} "
                f"of maxmemory; settled {time.monotonic() - resumed_at:.0f}s after the resume; "
                f"statuses {dict(load.statuses)}; OOM refusals in Redis: {oom_errors(client)}; "
                f"worker exit code: {worker.process.poll() if worker.process else None}"
            )
            assert worker.process is not None and worker.process.poll() is None, "the worker ended"
            result.assert_exactly_once()
            assert refusal.status_code == 503 and refusal.headers.get("Retry-After") == "1"
            assert refusal.json()["error"] == "queue_full", refusal.text
            assert "REDIS_MEMORY_HIGH_WATER" in refusal.json()["message"]
            assert used < MAXMEMORY, "the API should stop short of maxmemory"
            assert oom_errors(client) == 0, "Redis refused a write for memory: the workers' writes must fit"
            assert load.statuses[202] > 0 and load.slowest_refusal < 1.0
            assert int(client.config_get("maxmemory")["maxmemory"]) == MAXMEMORY
    finally:
        server.stop()


def probe(stack: Stack) -> tuple[int, str | None, str | None]:
    """One POST: its status, error code and Retry-After."""
    response = requests.post(f"{stack.ingest_url}/dummy", json={"probe": True}, timeout=5)
    code = response.json().get("error") if response.status_code >= 400 else None
    return response.status_code, code, response.headers.get("Retry-After")


def health(url: str) -> tuple[int, str | None, str]:
    response = requests.get(url, timeout=5)
    body = response.json()
    return response.status_code, body.get("error"), body.get("message", "")


def test_an_evicting_policy_is_refused_until_it_is_noeviction_again(
    tmp_path: Path, sqlite_url: str, log_dir: Path
) -> None:
    """Switch a running stack's Redis to allkeys-lru under load, then back to noeviction.

    Meanwhile every POST is 503 redis_evicting naming maxmemory-policy, and the
    ingestion API's and the worker's /healthz say so; afterwards 202s resume
    and every accepted message is stored once.
    """
    clear_database(sqlite_url)
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory", 256 * 1024 * 1024)
    metrics_port = free_port()
    worker_health = f"http://127.0.0.1:{metrics_port}/healthz"
    env = {**QUICK_REDELIVERY, "WORKER_METRICS_PORT": str(metrics_port)}
    try:
        with running_stack(sqlite_url, server.url, log_dir, env=env) as stack:
            wait_http_ok(worker_health)
            load = Load(stack.ingest_url, clients=2, pause=0.01)
            with load.running():
                wait_until(lambda: load.count() >= 300, timeout=30, what="messages accepted before the switch")
                client.config_set("maxmemory-policy", "allkeys-lru")
                switched = time.monotonic()
                wait_until(lambda: probe(stack)[0] == 503, timeout=5, what="the API refusing")
                noticed = time.monotonic() - switched
                time.sleep(1.2)  # every API process has read the policy again by now
                accepted_then = load.count()
                probes = [probe(stack) for _ in range(40)]
                api_health = health(f"{stack.ingest_url}/healthz")
                worker_said = health(worker_health)
                time.sleep(1)
                accepted_while_evicting = load.count() - accepted_then
                client.config_set("maxmemory-policy", "noeviction")
                wait_until(lambda: probe(stack)[0] == 202, timeout=5, what="the API accepting again")
                wait_until(lambda: health(worker_health)[0] == 200, timeout=5, what="the worker healthy again")
                time.sleep(1.2)  # every API process has read the policy again by now
                assert {health(f"{stack.ingest_url}/healthz")[0] for _ in range(10)} == {200}
                time.sleep(2)
            stored = settle(stack, load.accepted, timeout=SETTLE_SECONDS)
            result = tally("redis switched to allkeys-lru and back", load.accepted, stored, server.url)
            print(
                f"refusing {noticed:.2f}s after the switch; accepted while evicting: {accepted_while_evicting}; "
                f"API /healthz {api_health[:2]}, worker /healthz {worker_said[:2]}; statuses {dict(load.statuses)}"
            )
            assert noticed < 2.5, "the policy should be read again within about a second"
            assert set(probes) == {(503, "redis_evicting", "1")}, probes
            assert accepted_while_evicting == 0
            for status, code, message in (api_health, worker_said):
                assert (status, code) == (503, "redis_evicting") and "maxmemory-policy" in message, message
            result.assert_exactly_once()
    finally:
        server.stop()
