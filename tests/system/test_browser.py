"""The live page in real headless Chromium (Debian's package), against the real stack."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import ROOT, clear_database, wait_http_ok, wait_until
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture
def stack(sqlite_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    clear_database(sqlite_url)
    with running_stack(sqlite_url, redis_url, log_dir, with_ws=True) as stack:
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
    assert page.get_attribute("#notice", "data-kind") == "info", "a routine reset is not an error"
    assert page.eval_on_selector("#notice", "n => getComputedStyle(n).color") == "rgb(91, 100, 117)"
    page.close()


def test_page_is_served_by_the_list_api_with_its_stacks_urls(stack: Stack) -> None:
    response = requests.get(f"{stack.list_url}/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<title>Live messages</title>" in response.text
    config = re.search(r'<script type="application/json" id="stack-config">(.*?)</script>', response.text)
    assert config, "the page has no stack config"
    assert json.loads(config.group(1)) == {
        "list_api_url": stack.list_url,
        "ingestion_api_url": stack.ingest_url,
        "ws_url": stack.ws_url,
    }
    assert re.search(r'<ol id="messages" aria-live="polite"', response.text), "new messages are not announced"
    assert re.search(r'<link rel="icon" href="data:image/svg\+xml,', response.text), "no inline favicon"


def test_page_from_the_list_api_on_other_ports_uses_that_stack(browser, stack: Stack) -> None:
    """No query parameters: the page must find this stack's websocket and ingestion API, not 8765 and 5000."""
    assert stack.ws_port != 8765 and not stack.ingest_url.endswith(":5000")
    page = browser.new_page()
    sockets: list[str] = []
    posts: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    by_http = stack.post({"sent": "over HTTP"})
    wait_shown(page, {by_http})
    page.fill("#payload", '{"sent": "from the form"}')
    page.click("button[type=submit]")
    wait_until(lambda: len(shown_ids(page)) == 2, what="the form's message, live")
    assert '"sent": "from the form"' in page.text_content("li.message pre")
    assert page.text_content("#notice") == ""
    assert sockets and all(url.startswith(f"{stack.ws_url}/") for url in sockets), sockets
    assert posts == [f"{stack.ingest_url}/dummy"]
    wait_until(lambda: len(stack.listed()) == 2, what="both messages stored")
    page.close()


def test_disconnected_page_says_why(browser, stack: Stack) -> None:
    page = browser.new_page()
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    assert page.text_content("#reason") == ""
    # Record every reason shown: the server's close code is on screen only until the next attempt.
    page.evaluate("""() => {
        window.reasons = [];
        const reason = document.getElementById("reason");
        new MutationObserver(() => window.reasons.push(reason.textContent)).observe(reason, { childList: true });
    }""")
    stack.services["wsserver"].stop()
    page.wait_for_selector("#state[data-state=disconnected]")
    unreachable = f"could not connect to the websocket server at {stack.ws_url}"
    wait_until(lambda: unreachable in page.text_content("#reason"), what="the failed reconnect's reason")
    reasons = page.evaluate("window.reasons")
    assert any("the server is going away (1001" in text for text in reasons), reasons
    stack.start_wsserver()
    page.wait_for_selector("#state[data-state=live]", timeout=15_000)
    assert page.text_content("#reason") == ""
    page.close()


def test_error_notice_clears_after_reconnecting(browser, stack: Stack) -> None:
    """With the list API and wsserver down the page says it cannot load history; back up, it says nothing."""
    page = browser.new_page()
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    stack.services["list_api"].stop()
    stack.services["wsserver"].stop()
    page.wait_for_selector("#notice[data-kind=error]", timeout=15_000)
    assert f"Could not load history from {stack.list_url}" in page.text_content("#notice")
    stack.services["list_api"].start()
    wait_http_ok(f"{stack.list_url}/healthz")
    stack.start_wsserver()
    page.wait_for_selector("#state[data-state=live]", timeout=15_000)
    wait_until(lambda: page.text_content("#notice") == "", what="the error notice cleared")
    arrived = stack.post({"after": "recovery"})
    wait_shown(page, {arrived})
    page.close()
