"""The live page in real headless Chromium (Debian's package), against the real stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import clear_database
from tests.helpers import ROOT, wait_until
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture
def stack(sqlite_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    clear_database(sqlite_url)
    with running_stack(sqlite_url, redis_url, log_dir) as stack:
        yield stack


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all("li.message", "items => items.map(i => i.dataset.id)")


def wait_shown(page, expected: set[str]) -> None:
    wait_until(lambda: set(shown_ids(page)) >= expected, timeout=20, what=f"{len(expected)} messages on the page")


def assert_exactly(page, expected: set[str]) -> None:
    ids = shown_ids(page)
    assert len(ids) == len(set(ids)), "the page shows a message twice"
    assert set(ids) == expected, f"missing {expected - set(ids)}, unexpected {set(ids) - expected}"
    assert ids == sorted(ids, reverse=True), "the page is not newest first"


def test_page_shows_history_then_live_messages_and_survives_a_wsserver_restart(browser, stack: Stack) -> None:
    history = {stack.post({"n": i, "kind": "history"}) for i in range(3)}
    wait_until(lambda: len(stack.listed()) == 3, what="history persisted")
    page = browser.new_page()
    page.goto(f"{stack.list_url}/?ws={stack.ws_url}&ingest={stack.ingest_url}")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, history)

    live = {stack.post({"n": i, "kind": "live", "text": "héllo 🎉"}) for i in range(5)}
    wait_shown(page, history | live)
    assert_exactly(page, history | live)

    stack.services["wsserver"].stop()
    page.wait_for_selector("#state[data-state=disconnected]")
    while_down = {stack.post({"n": i, "kind": "while the wsserver was down"}) for i in range(4)}
    stack.start_wsserver()
    page.wait_for_selector("#state[data-state=live]", timeout=15_000)
    after = {stack.post({"n": i, "kind": "after restart"}) for i in range(2)}
    wait_shown(page, history | live | while_down | after)
    assert_exactly(page, history | live | while_down | after)

    page.set_viewport_size({"width": 900, "height": 700})
    page.wait_for_timeout(1600)  # let the arrival highlight fade
    shot = page.screenshot()
    if os.environ.get("UPDATE_SCREENSHOT"):
        (ROOT / "docs" / "screenshot.png").write_bytes(shot)
    assert len(shot) > 10_000
    page.close()


def test_page_from_file_url_loads_and_sends_a_message(browser, stack: Stack) -> None:
    earlier = stack.post({"from": "before the page opened"})
    wait_until(lambda: len(stack.listed()) == 1, what="message persisted")
    page = browser.new_page()
    page.goto(f"{(ROOT / 'index.html').as_uri()}?api={stack.list_url}&ws={stack.ws_url}&ingest={stack.ingest_url}")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, {earlier})
    page.fill("#payload", '{"sent from": "the page"}')
    page.click("button[type=submit]")
    wait_until(lambda: len(shown_ids(page)) == 2, what="the page's own message")
    newest = page.text_content("li.message pre")
    assert '"sent from": "the page"' in newest
    assert page.text_content("#notice") == ""
    page.close()


def test_page_backfills_after_a_reset(browser, stack: Stack) -> None:
    """When the server no longer knows the page's resume id it sends reset; the page backfills."""
    live_stream = redis.Redis.from_url(stack.env["REDIS_URL"])
    page = browser.new_page()
    page.goto(f"{stack.list_url}/?ws={stack.ws_url}&ingest={stack.ingest_url}")
    page.wait_for_selector("#state[data-state=live]")
    seen = {stack.post({"n": i, "kind": "seen live"}) for i in range(2)}
    wait_shown(page, seen)
    stack.services["wsserver"].stop()
    page.wait_for_selector("#state[data-state=disconnected]")
    missed = {stack.post({"n": i, "kind": "missed"}) for i in range(3)}
    wait_until(lambda: len(stack.listed()) == 5, what="missed messages persisted")
    live_stream.delete("messages:live")  # the window is gone, as after losing Redis
    stack.start_wsserver()
    page.wait_for_selector("#state[data-state=live]", timeout=15_000)
    wait_shown(page, seen | missed)
    later = {stack.post({"n": i, "kind": "later"}) for i in range(2)}
    wait_shown(page, seen | missed | later)
    assert_exactly(page, seen | missed | later)
    assert "reloaded" in page.text_content("#notice")
    page.close()


def test_page_is_served_by_the_list_api(stack: Stack) -> None:
    response = requests.get(f"{stack.list_url}/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<title>Live messages</title>" in response.text
