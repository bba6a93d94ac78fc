"""The whole stack as real processes on free ports, for end-to-end and browser tests."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import requests

from tests.helpers import Service, celery_worker, free_port, gunicorn, python_env, serve, stop_all, wait_http_ok


def wsserver(env: dict[str, str], log_dir: Path, port: int) -> Service:
    """A wsserver process on ``port`` (started by the caller)."""
    return serve(f"wsserver-{port}", "wsserver", {**env, "WS_PORT": str(port)}, log_dir)


class WsServer(Service):
    """A wsserver process of its own on a free port, ready once started."""

    def __init__(self, redis_url: str, log_dir: Path, **settings: str) -> None:
        self.port = free_port()
        env = python_env({"REDIS_URL": redis_url, "WS_PORT": str(self.port), **settings})
        super().__init__(f"wsserver-{self.port}", [sys.executable, "-m", "relay.serve", "wsserver"], env, log_dir)
        self.url = f"ws://127.0.0.1:{self.port}/"

    def start(self) -> WsServer:
        super().start()
        wait_http_ok(f"http://127.0.0.1:{self.port}/healthz")
        return self


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    ingest_url: str
    list_url: str
    ws_port: int
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    def start_wsserver(self) -> Service:
        service = wsserver(self.env, self.log_dir, self.ws_port).start()
        self.services["wsserver"] = service
        wait_http_ok(f"http://127.0.0.1:{self.ws_port}/healthz")
        return service

    def post(self, payload: dict) -> str:
        response = requests.post(f"{self.ingest_url}/dummy", json=payload, timeout=5)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def listed(self) -> list[dict]:
        return walk_listing(self.list_url)


def walk_listing(list_url: str, timeout: float = 10) -> list[dict]:
    """Every message ``GET /messages`` lists, walked with cursors the way a client does."""
    messages, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{list_url}/messages", params=params, timeout=timeout).json()
        messages += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return messages


class Listing(Protocol):
    """Anything whose whole listing can be walked: a local stack, the compose stack."""

    def listed(self) -> list[dict]: ...


def start_worker(stack: Stack, extra_env: dict[str, str] | None = None, concurrency: int = 2) -> Service:
    """Start (or restart, after a kill) the stack's Celery worker, optionally with its own settings."""
    service = celery_worker("worker", {**stack.env, **(extra_env or {})}, stack.log_dir, concurrency).start()
    stack.services["worker"] = service
    return service


@contextlib.contextmanager
def running_stack(
    database_url: str,
    redis_url: str,
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    with_worker: bool = True,
    with_ws: bool = False,
    web_workers: int = 2,
    list_workers: int = 1,
) -> Iterator[Stack]:
    """Start the stack as deployed: ingestion API, list API, a Celery worker, optionally a wsserver.

    ``env`` adds settings for every service, ``worker_env`` for the worker alone.

    Both APIs run with what gunicorn.conf.py sets (the gevent worker class),
    which gunicorn reads from the working directory as in the Procfile and
    compose.

    ``worker_env`` lets the worker reach the database another way than the
    list API (through a test-controlled proxy); ``with_worker=False`` leaves
    the queue to fill up until the test calls :func:`start_worker`.
    """
    ingest_port, list_port, ws_port = free_port(), free_port(), free_port()
    settings = {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        # As scripts/run.sh: every service knows the stack's ports (the live page gets URLs from them).
        "INGESTION_API_PORT": str(ingest_port),
        "LIST_API_PORT": str(list_port),
        "WS_PORT": str(ws_port),
        "LIST_API_URL": f"http://127.0.0.1:{list_port}",
        "SECRET_KEY": "e2e-secret",
        **(env or {}),
    }
    stack = Stack(
        python_env(settings), log_dir, f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{list_port}", ws_port
    )
    ingest = gunicorn("ingestion_api", "ingestion_api", ingest_port, stack.env, log_dir, web_workers)
    stack.services["ingestion_api"] = ingest.start()
    listing = gunicorn("list_api", "list_api", list_port, stack.env, log_dir, list_workers)
    stack.services["list_api"] = listing.start()
    try:
        if with_worker:
            start_worker(stack, worker_env)
        wait_http_ok(f"{stack.ingest_url}/healthz")
        wait_http_ok(f"{stack.list_url}/healthz")
        if with_ws:
            stack.start_wsserver()
        yield stack
    finally:
        stop_all(list(stack.services.values()))
        for service in stack.services.values():
            print(f"--- {service.name} log ---\n{service.log()[-3000:]}")
