"""Logs that follow a message: request ids, message ids, RFC 3339 times, JSON from every process.

Against the real stack (gunicorn-served APIs and a Celery worker): every line
each API process writes is one JSON object (gunicorn's own included), the APIs echo or make an
``X-Request-ID`` and put it on the request's access line with the message
ids it accepted, and the worker names every id of a batch it stored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import orjson
import pytest
import requests

from tests.helpers import wait_until
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    return start_stack()


def lines(stack: Stack, service: str) -> list[dict]:
    """Every line the service wrote, each parsed as JSON (a line that is not JSON fails the test)."""
    text = stack.services[service].log()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def log_lines(stack: Stack, service: str) -> list[dict]:
    """The service's log lines (Celery also prints a human banner and warnings, which are skipped)."""
    text = stack.services[service].log()
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def rfc3339(text: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text)) and bool(
        dt.datetime.fromisoformat(text).tzinfo
    )


def test_a_request_id_is_echoed_and_on_the_access_line_with_the_message_ids(stack: Stack) -> None:
    response = requests.post(
        f"{stack.ingest_url}/dummy/batch", json=[{"n": 1}, {"n": 2}], headers={"X-Request-ID": "trace-42"}, timeout=5
    )
    assert response.status_code == 202 and response.headers["X-Request-ID"] == "trace-42"
    ids = response.json()["ids"]

    def access_line() -> dict | None:
        return next((e for e in lines(stack, "ingestion_api") if e.get("request_id") == "trace-42"), None)

    wait_until(lambda: access_line() is not None, 5, what="the access line")
    entry = access_line()
    assert entry["logger"] == "access" and entry["status"] == 202 and entry["path"] == "/dummy/batch"
    assert entry["message_ids"] == ids and rfc3339(entry["ts"])


def test_a_missing_or_unusable_request_id_is_made_up(stack: Stack) -> None:
    made = [requests.get(f"{stack.list_url}/healthz", headers=h, timeout=5) for h in ({}, {"X-Request-ID": "x" * 500})]
    for response in made:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert made[0].headers["X-Request-ID"] != made[1].headers["X-Request-ID"]


def test_every_line_of_both_apis_is_json_with_an_rfc3339_time(stack: Stack) -> None:
    requests.post(f"{stack.ingest_url}/dummy", json={"n": 3}, timeout=5)
    requests.get(f"{stack.list_url}/messages", timeout=5)
    for service in ("ingestion_api", "list_api"):
        entries = lines(stack, service)
        assert entries, service
        assert all(rfc3339(e["ts"]) for e in entries), service
    gunicorn_lines = [e for e in lines(stack, "ingestion_api") if e["logger"].startswith("gunicorn")]
    assert any("Booting worker" in e["message"] for e in gunicorn_lines), "gunicorn's own lines are JSON too"


def test_the_worker_names_every_message_of_a_batch_it_stored(stack: Stack) -> None:
    ids = requests.post(f"{stack.ingest_url}/dummy/batch", json=[{"i": i} for i in range(5)], timeout=5).json()["ids"]

    def stored_line() -> bool:
        return any(set(ids) <= set(e.get("message_ids", [])) for e in log_lines(stack, "worker"))

    wait_until(stored_line, 20, what="the worker's line with every id of the batch")
