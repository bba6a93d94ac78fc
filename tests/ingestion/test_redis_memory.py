"""The ingestion API refuses messages a Redis could drop or fill past the workers' room (relay.broker.memory)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from flask import Flask

from tests.helpers import fill_redis_to
from tests.web.test_openapi import Conformance, Row


def queued(r: redis.Redis) -> int:
    return int(r.zcard("persist:pending"))


def test_an_evicting_policy_is_503_redis_evicting_and_healthz_says_so_until_it_is_fixed(
    make_ingestion_app: Callable[..., Flask], redis_config_restored: redis.Redis
) -> None:
    app = make_ingestion_app()
    client = app.test_client()
    assert client.post("/dummy", json={"a": 1}).status_code == 202
    redis_config_restored.config_set("maxmemory-policy", "allkeys-lru")
    time.sleep(1.05)  # the API reads Redis' memory at most once a second
    conformance = Conformance(app)
    for path, body in (("/dummy", b'{"a": 2}'), ("/dummy/batch", b'[{"a": 3}]')):
        kwargs = {"data": body, "content_type": "application/json"}
        response = conformance.check(Row("POST", path, 503, "redis_evicting", kwargs=kwargs), path)
        assert response.headers["Retry-After"] == "1"
        assert "maxmemory-policy" in response.get_json()["message"]
    health = conformance.check(Row("GET", "/healthz", 503, "redis_evicting"), "/healthz")
    assert "allkeys-lru" in health.get_json()["message"]
    assert queued(redis_config_restored) == 1, "a refused message must not be queued"
    redis_config_restored.config_set("maxmemory-policy", "noeviction")
    time.sleep(1.05)
    assert client.post("/dummy", json={"a": 4}).status_code == 202
    assert client.get("/healthz").status_code == 200


def test_redis_at_the_high_water_mark_is_503_queue_full_and_healthz_stays_ok(
    make_ingestion_app: Callable[..., Flask], redis_config_restored: redis.Redis
) -> None:
    """Full is a backlog for the workers to drain, not a broken API: /healthz keeps answering 200."""
    app = make_ingestion_app(redis_memory_high_water=0.5)
    client = app.test_client()
    fill_redis_to(redis_config_restored, 0.75)  # well past the mark (0.5), short of the limit
    started = time.monotonic()
    response = Conformance(app).check(
        Row("POST", "/dummy", 503, "queue_full", kwargs={"json": {"a": 1}}, headers_present=("Retry-After",)), "/dummy"
    )
    assert time.monotonic() - started < 1.0
    assert "REDIS_MEMORY_HIGH_WATER (0.5)" in response.get_json()["message"]
    assert client.get("/healthz").status_code == 200
    assert queued(redis_config_restored) == 0
    redis_config_restored.config_set("maxmemory", 0)
    time.sleep(1.05)
    assert client.post("/dummy", json={"a": 2}).status_code == 202
