"""Prometheus metrics on every service and JSON logs, from real processes where it matters."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask
from websockets.asyncio.client import connect

from relay.logs import JsonFormatter
from tests.helpers import celery_worker, free_port, gunicorn, python_env, wait_http_ok, wait_until
from tests.stack import WsServer


def metric(text: str, name: str, labels: str = "") -> float:
    """Read one sample from Prometheus text exposition (0 when absent)."""
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} ([0-9.e+-]+)$"
    match = re.search(pattern, text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_ingestion_metrics_count_accepted_rejected_and_queue_depth(make_ingestion_app: Callable[..., Flask]) -> None:
    client = make_ingestion_app().test_client()
    before = client.get("/metrics").text
    for i in range(3):
        client.post("/dummy", json={"i": i})
    client.post("/dummy/batch", json=[{}, {}])
    client.post("/dummy", data=b"{bad", headers={"Content-Type": "application/json"})
    text = client.get("/metrics").text
    assert (
        metric(text, "messages_accepted_total", 'endpoint="post_message"')
        - metric(before, "messages_accepted_total", 'endpoint="post_message"')
        == 3
    )
    assert metric(text, "messages_accepted_total", 'endpoint="post_batch"') >= 2
    assert metric(text, "messages_rejected_total", 'error="400"') >= 1
    assert metric(text, "persist_queue_depth") == 4  # three single tasks and one batch task
    assert 'http_requests_total{app="ingestion_api",endpoint="post_message",method="POST",status="202"}' in text


def test_http_requests_are_counted_by_method_so_a_preflight_is_not_a_publish(
    make_ingestion_app: Callable[..., Flask],
) -> None:
    """A CORS preflight counts as OPTIONS, not as a POST; an unknown method as "other" (bounded labels)."""
    client = make_ingestion_app().test_client()
    preflight = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    before = client.get("/metrics").text
    client.options("/dummy", headers=preflight)
    client.open("/dummy", method="PROPFIND")
    client.open("/dummy", method="X-INVENTED-1")
    text = client.get("/metrics").text

    def count(method: str, status: str, endpoint: str = "post_message") -> float:
        labels = f'app="ingestion_api",endpoint="{endpoint}",method="{method}",status="{status}"'
        return metric(text, "http_requests_total", labels) - metric(before, "http_requests_total", labels)

    assert count("OPTIONS", "200") == 1
    assert count("POST", "200") == count("POST", "202") == 0
    assert count("other", "405", endpoint="unknown") == 2  # a 405 matched no endpoint
    assert "PROPFIND" not in text and "X-INVENTED" not in text
    assert 'http_request_duration_seconds_count{app="ingestion_api",endpoint="post_message",method="OPTIONS"}' in text


def test_list_api_serves_metrics(make_list_app: Callable[..., Flask]) -> None:
    app = make_list_app()
    client = app.test_client()
    client.get("/messages")
    text = client.get("/metrics").text
    assert metric(text, "http_requests_total", 'app="list_api",endpoint="list_view",method="GET",status="200"') >= 1


@pytest.mark.e2e
def test_gunicorn_workers_and_celery_pool_aggregate_metrics(
    sqlite_url: str, redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    """Several gunicorn workers and pool processes report one total (multiprocess mode)."""
    from tests.helpers import clear_database

    clear_database(sqlite_url)
    api_dir, worker_dir = tmp_path / "api", tmp_path / "worker"
    api_dir.mkdir()
    worker_dir.mkdir()
    port, metrics_port = free_port(), free_port()
    env = python_env({"REDIS_URL": redis_url, "SQLALCHEMY_DATABASE_URI": sqlite_url})
    api_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(api_dir)}
    api = gunicorn("ingestion_api", "ingestion_api", port, api_env, log_dir, workers=2).start()
    worker_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(worker_dir), "WORKER_METRICS_PORT": str(metrics_port)}
    worker = celery_worker("worker", worker_env, log_dir).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz")
        session = requests.Session()
        for i in range(40):
            assert session.post(f"http://127.0.0.1:{port}/dummy", json={"i": i}, timeout=5).status_code == 202
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(text, "messages_accepted_total", 'endpoint="post_message"') == 40
        scrape = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until(lambda: metric(requests.get(scrape, timeout=2).text, "persisted_messages_total") == 40)
        scraped = requests.get(scrape, timeout=2).text
        assert metric(scraped, "persist_batch_records_count") >= 1
        # One latency observation per stored message, summed over the pool's processes.
        assert metric(scraped, "message_stored_latency_seconds_count") == 40
        assert 0 < metric(scraped, "message_stored_latency_seconds_sum") < 40 * 30
        # The backlog gauges are read from Redis once per scrape, never once per process.
        for gauge in ("pending_records", "dead_letter_records"):
            assert [line for line in scraped.splitlines() if line.startswith(gauge + " ")] == [f"{gauge} 0.0"]
        lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        stored = [entry for entry in lines if entry["message"].startswith("stored ")]
        assert stored and all(entry["service"] == "worker" and entry["message_ids"] for entry in stored)
    finally:
        api.stop()
        worker.stop()


@pytest.mark.e2e
def test_wsserver_serves_metrics(redis_url: str, log_dir: Path) -> None:
    server = WsServer(redis_url, log_dir).start()
    try:

        async def scenario() -> str:
            async with connect(server.url) as ws:
                await asyncio.wait_for(ws.recv(), 5)
                return await asyncio.to_thread(
                    lambda: requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
                )

        text = asyncio.run(scenario())
        assert metric(text, "ws_connections") == 1
        for name in ("ws_frames_delivered_total", "ws_frames_dropped_total", "ws_slow_disconnects_total"):
            assert f"\n{name} " in text
    finally:
        server.stop()


def test_json_log_lines_carry_message_ids() -> None:
    record = logging.LogRecord("tasks", logging.INFO, __file__, 1, "stored %d", (3,), None)
    record.message_ids = ["a", "b"]
    entry = json.loads(JsonFormatter("worker").format(record))
    assert entry["message"] == "stored 3" and entry["message_ids"] == ["a", "b"]
    assert entry["service"] == "worker" and entry["level"] == "INFO" and entry["ts"].endswith("+00:00")
