"""Fault: the list API's database hangs (answers nothing) instead of going away.

A stopped MariaDB (``SIGSTOP``, a stalled disk) accepts connections and
reads queries but answers nothing: without timeouts every list request and
``/healthz`` hangs with it, and a load balancer sees a healthy, silent
service. The proxy's freeze makes exactly that between a real list API
(gunicorn, as deployed) and the session's MariaDB.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy.engine import make_url

from tests.helpers import free_port, gunicorn, python_env, stop_all, wait_http_ok
from tests.tcp_proxy import TcpProxy

TIMEOUT_SECONDS = 2.0  # LIST_DATABASE_TIMEOUT_SECONDS for the test: quick, and well above a query's time
PATHS = ("/messages", "/channels", "/channels/dummy/messages", "/healthz")


def timed_get(url: str) -> tuple[int, str | None, float]:
    """GET ``url``; return its status, its error code and how long the answer took."""
    began = time.monotonic()
    response = requests.get(url, timeout=20)
    error = response.json().get("error") if response.status_code >= 400 else None
    return response.status_code, error, time.monotonic() - began


def test_a_hung_database_answers_503_within_the_timeout_then_recovers(mysql_url: str, log_dir: Path) -> None:
    """Freeze the list API's MariaDB: list requests and /healthz answer 503 within seconds, 200 once it thaws."""
    server = make_url(mysql_url)
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 3306).start()
    through_proxy = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    env = python_env(
        {
            "SQLALCHEMY_DATABASE_URI": through_proxy,
            "SECRET_KEY": "test-secret",
            "LIST_DATABASE_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        }
    )
    api = gunicorn("list_api", "list_api", port, env, log_dir).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/healthz")
        for path in PATHS:  # pooled connections through the proxy, which the freeze then holds
            assert requests.get(base + path, timeout=5).status_code == 200, path
        proxy.freeze()
        # More concurrent requests than the pool has connections (5 + 10 overflow): waiting for one is bounded too.
        urls = [base + PATHS[n % len(PATHS)] for n in range(24)]
        with ThreadPoolExecutor(len(urls)) as pool:
            answers = list(pool.map(timed_get, urls))
        slowest = max(seconds for _, _, seconds in answers)
        print(f"\nFAULT hung database: {len(answers)} requests answered, slowest in {slowest:.1f} s")
        assert {(status, error) for status, error, _ in answers} == {(503, "database_unavailable")}, answers
        # A connect, a read and a pool wait can add up within one request: bounded by a few timeouts, not the hang.
        assert slowest < 4 * TIMEOUT_SECONDS + 2, answers
        proxy.thaw()
        began = time.monotonic()
        wait_http_ok(f"{base}/healthz", timeout=4 * TIMEOUT_SECONDS + 2)
        for path in PATHS:
            assert requests.get(base + path, timeout=5).status_code == 200, path
        print(f"FAULT hung database: 200 again {time.monotonic() - began:.1f} s after the thaw")
    finally:
        proxy.thaw()
        stop_all([api])
        proxy.stop()
