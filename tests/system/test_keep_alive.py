"""A client's kept-alive connection survives every early rejection (real gunicorn, as deployed).

The APIs answer some requests without reading their body: too large (413),
the wrong type (415), no token (401), over the rate limit (429). The next
request on the same connection must still be served: a client such as
``requests.Session`` reuses it, and before, 33 of 60 small POSTs sent after a
200 KB one failed with "Remote end closed connection without response".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import requests

from tests.stack import Stack

pytestmark = pytest.mark.e2e

TOKEN = "keep-alive-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    # Per minute, not per second: 150 posts must pass the limit however slowly a busy machine sends
    # them, and every test starts with a fresh budget (fresh_budget) for its own 61 posts.
    return start_stack(env={"API_TOKENS": TOKEN, "RATE_LIMIT": "100/minute"})


@pytest.fixture(autouse=True)
def fresh_budget(stack: Stack) -> None:
    """Each test starts with the client's whole rate-limit budget (the counters live in Redis).

    The position counters survive the flush, as they would any operator's cleaning of rate-limit keys:
    without them the API refuses everything until a worker notices and seeds them again.
    """
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    counters = client.hgetall("persist:positions")
    client.flushdb()
    if counters:
        client.hset("persist:positions", mapping=counters)


def big(size: int) -> bytes:
    return b'{"pad": "' + b"x" * size + b'"}'


REJECTIONS = {
    "413 by Content-Length": (big(200_000), {**AUTH, **JSON}, 413),
    "413 for 9 MB": (big(9_000_000), {**AUTH, **JSON}, 413),
    "415": (big(50_000), {**AUTH, "Content-Type": "text/plain"}, 415),
    "401": (big(50_000), JSON, 401),
}


@pytest.mark.parametrize(("body", "headers", "status"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_the_connection_serves_the_next_requests_after_an_early_rejection(
    stack: Stack, body: bytes, headers: dict[str, str], status: int
) -> None:
    with requests.Session() as session:
        assert session.post(f"{stack.ingest_url}/dummy", data=body, headers=headers, timeout=30).status_code == status
        answers = [
            session.post(f"{stack.ingest_url}/dummy", json={"i": i}, headers=AUTH, timeout=10) for i in range(60)
        ]
    assert [a.status_code for a in answers] == [202] * 60


def test_the_connection_serves_the_next_request_after_a_429(stack: Stack) -> None:
    with requests.Session() as session:
        statuses = [
            session.post(
                f"{stack.ingest_url}/dummy", data=big(10_000), headers={**AUTH, **JSON}, timeout=10
            ).status_code
            for _ in range(150)
        ]
        assert 429 in statuses
        after = session.get(f"{stack.ingest_url}/healthz", timeout=10)
    assert after.status_code == 200
