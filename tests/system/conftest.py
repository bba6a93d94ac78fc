"""Fixtures of the whole-stack tests: the stack as real processes, and a real browser."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from relay.broker.positions import Positions
from tests.helpers import RedisServer, clear_database
from tests.stack import Stack, running_stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package; never a downloaded browser
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def start_stack(
    sqlite_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Start the stack for a whole module on the session's SQLite file and Redis, both emptied first.

    The position counters are seeded for the empty database, as the redis_url fixture does.

    Takes :func:`tests.stack.running_stack`'s options; the processes stop when the module ends.
    """
    with contextlib.ExitStack() as started:

        def start(**options: Any) -> Stack:
            client = redis.Redis.from_url(redis_server.url)
            client.flushdb()
            clear_database(sqlite_url)
            Positions(client, "persist").seed(0, {})  # as a worker seeds them: some modules run none
            logs = tmp_path_factory.mktemp("logs")
            return started.enter_context(running_stack(sqlite_url, redis_server.url, logs, **options))

        yield start


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium driven by Playwright (skipped locally without it; a failure in CI)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield launched
        launched.close()
