"""Bearer tokens, rate limits and security headers, against real Redis and databases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.auth import bearer, token_ok
from tests.helpers import in_process_ingestion_app
from tests.stack import WsServer


def test_token_ok_matches_only_listed_tokens() -> None:
    assert token_ok("b", ("a", "b"))
    assert not token_ok("c", ("a", "b"))
    assert not token_ok("", ("a",))
    assert not token_ok(None, ("a",))
    assert not token_ok("ab", ("a",))


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer s3cret", "s3cret"), ("bearer s3cret", "s3cret"), ("Basic s3cret", None), ("Bearer ", None), (None, None)],
)
def test_bearer_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_ingestion_requires_a_token_when_configured(redis_url: str) -> None:
    client = in_process_ingestion_app(redis_url, api_tokens=("alpha", "beta")).test_client()
    r = redis.Redis.from_url(redis_url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic alpha"}):
        response = client.post("/dummy", json={"a": 1}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/dummy/batch", json=[{"a": 1}]).status_code == 401
    assert r.llen("persist") == 0 and r.xlen("messages:live") == 0
    assert client.post("/dummy", json={"a": 1}, headers={"Authorization": "Bearer beta"}).status_code == 202
    assert client.get("/healthz").status_code == 200


def test_listing_requires_a_token_when_configured(make_list_app: Callable[..., Flask]) -> None:
    app = make_list_app(api_tokens=("alpha",))
    client = app.test_client()
    assert client.get("/messages").status_code == 401
    assert client.get("/messages/01a22649-0717-7cb0-a31f-94907ddc217f").status_code == 401
    assert client.get("/messages", headers={"Authorization": "Bearer alpha"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_failed_token_checks_on_the_list_api_are_limited_per_address(make_list_app: Callable[..., Flask]) -> None:
    client = make_list_app(api_tokens=("right",), auth_failure_limit="3/minute").test_client()
    wrong = [client.get("/messages", headers={"Authorization": "Bearer guess"}) for _ in range(5)]
    assert [r.status_code for r in wrong] == [401] * 3 + [429] * 2
    assert wrong[-1].get_json()["error"] == "too_many_requests" and int(wrong[-1].headers["Retry-After"]) >= 1
    assert client.get("/messages", headers={"Authorization": "Bearer right"}).status_code == 200
    assert client.get("/healthz").status_code == 200, "open endpoints are never refused"


def test_open_when_no_tokens_are_configured(redis_url: str) -> None:
    client = in_process_ingestion_app(redis_url).test_client()
    assert client.post("/dummy", json={"a": 1}).status_code == 202


def test_websocket_handshake_needs_a_token_when_configured(redis_url: str, log_dir) -> None:
    server = WsServer(redis_url, log_dir, API_TOKENS="alpha,beta").start()
    try:

        async def scenario() -> None:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.response.status_code == 401
            with pytest.raises(InvalidStatus):
                await connect(f"{server.url}?token=nope")
            async with connect(f"{server.url}?token=beta") as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"ready"}'
            async with connect(server.url, additional_headers={"Authorization": "Bearer alpha"}) as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"ready"}'

        asyncio.run(scenario())
        assert "beta" not in server.log() and "alpha" not in server.log()
    finally:
        server.stop()


def test_rate_limit_answers_429_with_retry_after_and_holds_across_processes(
    redis_url: str, make_ingestion_app: Callable[..., Flask]
) -> None:
    first, second = (make_ingestion_app(rate_limit="5/minute").test_client() for _ in range(2))
    statuses = [c.post("/dummy", json={"i": i}).status_code for i, c in enumerate([first, second] * 3)]
    assert statuses == [202] * 5 + [429]
    limited = second.post("/dummy", json={"i": 99})
    assert limited.status_code == 429
    assert limited.get_json()["error"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) > 0
    assert redis.Redis.from_url(redis_url).llen("persist") == 5
    assert first.get("/healthz").status_code == 200, "health checks are not rate limited"


def test_rate_limit_counts_messages_across_both_endpoints(redis_url: str) -> None:
    """One budget per client over single and batch POSTs: a batch costs its size, refusals cost nothing."""
    client = in_process_ingestion_app(redis_url, rate_limit="10/minute").test_client()
    assert client.post("/dummy/batch", json=[{"i": i} for i in range(8)]).status_code == 202
    assert client.post("/dummy", json={"n": 9}).status_code == 202
    refused = client.post("/dummy/batch", json=[{}, {}])  # 11 > 10: refused whole, nothing charged
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert client.post("/dummy", json={"n": 10}).status_code == 202
    assert client.post("/dummy", json={"n": 11}).status_code == 429
    too_big = client.post("/dummy/batch", json=[{}] * 11)
    assert too_big.status_code == 429 and too_big.get_json()["error"] == "batch_over_rate_limit"
    queued = redis.Redis.from_url(redis_url).hlen("persist:pending:records")
    assert queued == 10, "exactly the allowed messages were queued"


def test_failed_token_checks_are_rate_limited_per_address(redis_url: str) -> None:
    """AUTH_FAILURE_LIMIT, a budget of its own: RATE_LIMIT unset does not leave token guessing unlimited."""
    client = in_process_ingestion_app(redis_url, auth_failure_limit="5/minute", api_tokens=("right",)).test_client()
    wrong = [client.post("/dummy", json={}, headers={"Authorization": "Bearer guess"}) for _ in range(8)]
    assert [r.status_code for r in wrong] == [401] * 5 + [429] * 3
    assert all(int(r.headers["Retry-After"]) >= 1 for r in wrong[5:])
    good = client.post("/dummy", json={}, headers={"Authorization": "Bearer right"})
    assert good.status_code == 202, "a valid token has its own budget, not the guessing address's"


def test_retry_after_is_never_zero(redis_url: str) -> None:
    """Refusals spread over a second-long window all tell the client to wait at least one second."""
    client = in_process_ingestion_app(redis_url, rate_limit="20/second").test_client()
    retry_afters = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        response = client.post("/dummy", json={})
        if response.status_code == 429:
            retry_afters.append(response.headers["Retry-After"])
    assert len(retry_afters) > 20
    assert all(int(value) >= 1 for value in retry_afters), sorted(set(retry_afters))


def test_rate_limit_counts_per_client_address_behind_a_proxy(redis_url: str) -> None:
    client = in_process_ingestion_app(redis_url, rate_limit="2/minute", proxy_count=1).test_client()
    for address in ("203.0.113.1", "203.0.113.2"):
        statuses = [client.post("/dummy", json={}, headers={"X-Forwarded-For": address}).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]


def test_security_headers_and_no_debug(
    make_ingestion_app: Callable[..., Flask], make_list_app: Callable[..., Flask]
) -> None:
    ingest, listing = make_ingestion_app(), make_list_app()
    for app in (ingest, listing):
        assert not app.debug
        response = app.test_client().get("/healthz")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
