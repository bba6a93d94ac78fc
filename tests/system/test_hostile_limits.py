"""Hostile clients only a limit stops, against real gunicorn (gunicorn.conf.py), the websocket server and Redis.

Stalled request bodies: gunicorn times out a request head, not the body the
app reads after it, so 3 ingestion processes x 1,000 ``worker_connections``
(gunicorn.conf.py), each a POST head and one byte of its body, held the
whole API: ``/healthz`` timed out for 40 s (issue 27). Token guessing: with
``API_TOKENS`` set, the list API and the websocket handshake answered 401
for ever while only the ingestion API turned to 429, and that only with
``RATE_LIMIT`` set.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import orjson
import pytest
import redis
import requests
from probe_connections import address, healthz_seconds
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.settings import load_settings
from tests.stack import Stack

pytestmark = pytest.mark.e2e

TOKEN = "the-right-token"
WORKERS = 3
STALLED = WORKERS * 1000  # every slot of every process: gunicorn.conf.py's worker_connections is 1,000
BODY_TIMEOUT = 3.0  # REQUEST_BODY_TIMEOUT_SECONDS here; the default is longer
STALLED_BODY = (
    "POST /dummy HTTP/1.1\r\nHost: hostile\r\nContent-Type: application/json\r\n"
    f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
).encode()  # a valid token, so the app reads the body (a 401 is answered before any body is read)
FAILURES = int(load_settings({}).auth_failure_limit.split("/")[0])  # AUTH_FAILURE_LIMIT's default


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    """Ingestion API with three gunicorn processes, list API, wsserver; tokens on, RATE_LIMIT unset."""
    env = {"API_TOKENS": TOKEN, "REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT)}
    stack = start_stack(with_worker=False, web_workers=WORKERS, env=env)
    stack.start_wsserver()
    return stack


def read_answer(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes, or what came before ``deadline``."""
    answer = b""
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
    except OSError:
        pass
    return answer + b"<still open>"


def test_stalled_bodies_on_every_connection_are_cut_off_and_healthz_answers(stack: Stack) -> None:
    """3,000 POSTs that send a head and one byte of their body fill every process; each gets a 408 and is
    closed after REQUEST_BODY_TIMEOUT_SECONDS, and /healthz on a fresh connection answers soon after."""
    started = time.monotonic()
    socks = []
    try:
        for _ in range(STALLED):
            sock = socket.create_connection(address(stack.ingest_url), timeout=10)
            sock.sendall(STALLED_BODY)
            socks.append(sock)
        opened = time.monotonic() - started
        healthz = healthz_seconds(stack.ingest_url, cap=BODY_TIMEOUT + 20)
        deadline = time.monotonic() + 2 * BODY_TIMEOUT + 10
        answers = [read_answer(sock, deadline) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    print(f"\n{STALLED} stalled bodies opened in {opened:.1f} s; /healthz answered in {healthz:.1f} s")
    assert healthz < BODY_TIMEOUT + opened + 5, f"/healthz took {healthz:.1f} s with {STALLED} stalled bodies"
    cut_off = [a for a in answers if a.startswith(b"HTTP/1.1 408 ") and not a.endswith(b"<still open>")]
    assert len(cut_off) == STALLED, f"{len(cut_off)} of {STALLED} answered 408 and closed; e.g. {answers[0][:200]!r}"
    head, _, body = cut_off[0].partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head and b"\r\nContent-Type: application/json\r\n" in head, head
    assert orjson.loads(body)["error"] == "request_timeout"
    assert requests.get(f"{stack.ingest_url}/healthz", timeout=2).status_code == 200


def test_a_slow_body_that_keeps_arriving_is_accepted(stack: Stack) -> None:
    """The limit cuts off stalled bodies, not slow ones: a body still arriving past the timeout gets its 202."""
    body = orjson.dumps([{"slow": "x" * 50_000}] * 4)
    head = STALLED_BODY[:-1].replace(b"POST /dummy", b"POST /dummy/batch")
    with socket.create_connection(address(stack.ingest_url), timeout=10) as sock:
        sock.sendall(head.replace(b"Content-Length: 100", b"Content-Length: %d" % len(body)))
        step = len(body) // 8 + 1
        for i in range(0, len(body), step):  # about 25 KiB every 0.5 s: 4 s in all, past BODY_TIMEOUT
            sock.sendall(body[i : i + step])
            time.sleep(0.5)
        answer = read_answer(sock, time.monotonic() + 10)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]


def forget_failures(stack: Stack) -> None:
    """Start every address with a whole failed-token budget (the counters are in Redis)."""
    broker = redis.Redis.from_url(stack.env["REDIS_URL"])
    for key in broker.scan_iter("*auth-failure*"):
        broker.delete(key)


def answer(service: str, stack: Stack, token: str) -> tuple[int, dict[str, str], bytes]:
    """One request to ``service`` with ``token``: status, headers (lower-case names) and body."""
    auth = {"Authorization": f"Bearer {token}"}
    if service == "ingestion":
        response = requests.post(f"{stack.ingest_url}/dummy", json={}, headers=auth, timeout=5)
    elif service == "list":
        response = requests.get(f"{stack.list_url}/messages", headers=auth, timeout=5)
    else:
        return asyncio.run(handshake(stack.ws_url, token))
    return response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content


async def handshake(url: str, token: str) -> tuple[int, dict[str, str], bytes]:
    try:
        async with connect(f"{url}/?token={token}", open_timeout=5):
            return 101, {}, b""
    except InvalidStatus as refused:
        response = refused.response
        return response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, response.body or b""


SERVICES = ("ingestion", "list", "websocket")


@pytest.mark.parametrize("service", SERVICES)
def test_token_guessing_is_limited_on_every_service(stack: Stack, service: str) -> None:
    """With RATE_LIMIT unset, AUTH_FAILURE_LIMIT's default lets an address fail that many times, then 429s
    with Retry-After; a valid token from the same address still gets in."""
    forget_failures(stack)
    answers = [answer(service, stack, f"guess-{i}") for i in range(FAILURES + 10)]
    statuses = [status for status, _, _ in answers]
    print(f"\n{service}: {statuses.count(401)} x 401 before the first 429")
    assert statuses == [401] * FAILURES + [429] * 10, statuses
    for _, headers, body in answers[FAILURES:]:
        assert int(headers["retry-after"]) >= 1, headers
        assert headers["content-type"].startswith("application/json")
        assert orjson.loads(body)["error"] == "too_many_requests"
    assert answer(service, stack, TOKEN)[0] in (200, 202, 101), "a valid token passes whatever its address did"


def test_one_failure_budget_is_shared_by_every_service(stack: Stack) -> None:
    """Guessing cannot multiply its budget by switching services: the failures of all three add up."""
    forget_failures(stack)
    spread = [SERVICES[i % len(SERVICES)] for i in range(FAILURES)]
    assert [answer(service, stack, "guess")[0] for service in spread] == [401] * FAILURES
    assert [answer(service, stack, "guess")[0] for service in SERVICES] == [429] * len(SERVICES)
