"""Fault: the wsserver stalls (SIGSTOP) while more messages than the live stream holds are published.

Its clients stay connected and the stream is trimmed past what the wsserver
has read. The page must still end up showing every accepted message exactly
once: the wsserver sends ``reset`` and the page refills from the list API,
instead of a silent gap. The stack runs as deployed (gunicorn, a Celery
worker, a wsserver) with a small ``LIVE_WINDOW`` so the stall is short.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.helpers import clear_database, wait_until
from tests.stack import running_stack
from tests.system.test_browser import assert_exactly, shown_ids

pytestmark = [pytest.mark.faults, pytest.mark.browser, pytest.mark.e2e]

WINDOW = 50  # the live stream holds about this many messages (plus a radix tree node)


def test_the_page_shows_every_message_once_across_a_wsserver_stalled_past_the_window(
    browser: Browser, sqlite_url: str, redis_url: str, log_dir: Path
) -> None:
    clear_database(sqlite_url)
    with running_stack(sqlite_url, redis_url, log_dir, env={"LIVE_WINDOW": str(WINDOW)}, with_ws=True) as stack:
        page = browser.new_page()
        page.goto(f"{stack.list_url}/?ws={stack.ws_url}&ingest={stack.ingest_url}")
        page.wait_for_selector("#state[data-state=live]")
        before = [stack.post({"n": i, "kind": "before"}) for i in range(5)]
        wait_until(lambda: set(shown_ids(page)) >= set(before), what="the first messages on the page")
        wsserver = stack.services["wsserver"]
        wsserver.signal(signal.SIGSTOP)
        try:
            during = [stack.post({"n": i, "kind": "while stalled"}) for i in range(6 * WINDOW)]
        finally:
            wsserver.signal(signal.SIGCONT)
        after = [stack.post({"n": i, "kind": "after"}) for i in range(5)]
        accepted = set(before + during + after)
        assert len(accepted) < 500, "the page keeps 500 messages; post fewer"
        wait_until(lambda: len(stack.listed()) == len(accepted), what="every message stored")
        with contextlib.suppress(AssertionError):  # counted and asserted below
            wait_until(lambda: set(shown_ids(page)) >= accepted, timeout=20, what="every message on the page")
        shown = set(shown_ids(page))
        print(
            f"FAULT wsserver stalled, live page: accepted={len(accepted)} shown={len(shown & accepted)} "
            f"missing={len(accepted - shown)} resets={wsserver.log().count('trimmed before this server read them')}"
        )
        assert_exactly(page, accepted)
        page.close()
