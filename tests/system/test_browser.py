"""The live page in real headless Chromium (Debian's package), against the real stack."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


@pytest.fixture
def new_page(browser) -> Iterator[Callable[..., object]]:
    """Open pages (``browser.new_page`` options) that fail the test on any uncaught script error."""
    opened: list = []
    errors: list[str] = []

    def open_page(**options: object):
        page = browser.new_page(**options)
        page.on("pageerror", lambda error: errors.append(str(error)))
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()
    assert not errors, f"script errors on the page: {errors}"


def post_to(stack: Stack, channel: str, payload: dict) -> str:
    """Post one message to ``channel`` through the ingestion API; return its id."""
    response = requests.post(f"{stack.ingest_url}/channels/{channel}/messages", json=payload, timeout=5)
    assert response.status_code == 202, response.text
    assert response.json()["channel"] == channel
    return response.json()["id"]


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all("li.message", "items => items.map(i => i.dataset.id)")


def visible_ids(page) -> set[str]:
    return set(page.eval_on_selector_all("li.message:not([hidden])", "items => items.map(i => i.dataset.id)"))


def wait_shown(page, expected: set[str]) -> None:
    wait_until(lambda: set(shown_ids(page)) >= expected, timeout=20, what=f"{len(expected)} messages on the page")


def shown_positions(page) -> list[int]:
    return page.eval_on_selector_all("li.message", "items => items.map(i => Number(i.dataset.position))")


def assert_exactly(page, expected: set[str]) -> None:
    ids = shown_ids(page)
    assert len(ids) == len(set(ids)), "the page shows a message twice"
    assert set(ids) == expected, f"missing {expected - set(ids)}, unexpected {set(ids) - expected}"
    positions = shown_positions(page)
    assert positions == sorted(positions, reverse=True), "the page is not newest first (in accept order)"


def test_page_shows_history_then_live_messages_and_survives_a_wsserver_restart(new_page, stack: Stack) -> None:
    history = {stack.post({"n": i, "kind": "history"}) for i in range(3)}
    wait_until(lambda: len(stack.listed()) == 3, what="history persisted")
    page = new_page()
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
    in_order = [stack.post({"n": i, "kind": "after restart"}) for i in range(2)]
    after = set(in_order)
    wait_shown(page, history | live | while_down | after)
    assert_exactly(page, history | live | while_down | after)

    # The connection panel tells where the page is connected, where it would resume, and what happened.
    assert page.text_content("#server") == f"{stack.ws_url}/"
    wait_until(lambda: in_order[-1] in {m["id"] for m in stack.listed()}, what="the last message stored")
    last = next(m for m in stack.listed() if m["id"] == in_order[-1])
    assert page.text_content("#position") == str(last["position"])
    assert int(page.text_content("#reconnects")) >= 1
    assert re.search(r"the server is going away \(1001|could not connect", page.text_content("#last-drop"))


def test_page_from_file_url_loads_and_sends_a_message(new_page, stack: Stack) -> None:
    earlier = stack.post({"from": "before the page opened"})
    wait_until(lambda: len(stack.listed()) == 1, what="message persisted")
    page = new_page()
    page.goto(f"{(ROOT / 'index.html').as_uri()}?api={stack.list_url}&ws={stack.ws_url}&ingest={stack.ingest_url}")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, {earlier})
    page.fill("#payload", '{"sent from": "the page"}')
    page.click("button[type=submit]")
    wait_until(lambda: len(shown_ids(page)) == 2, what="the page's own message")
    newest = page.text_content("li.message pre")
    assert '"sent from": "the page"' in newest
    assert page.text_content("#notice") == ""


def test_page_backfills_after_a_reset(new_page, stack: Stack) -> None:
    """When the server no longer knows the page's resume id it sends reset; the page backfills."""
    live_stream = redis.Redis.from_url(stack.env["REDIS_URL"])
    page = new_page()
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


def test_page_from_the_list_api_on_other_ports_uses_that_stack(new_page, stack: Stack) -> None:
    """No query parameters: the page must find this stack's websocket and ingestion API, not 8765 and 5000."""
    assert stack.ws_port != 8765 and not stack.ingest_url.endswith(":5000")
    page = new_page()
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


def test_disconnected_page_says_why(new_page, stack: Stack) -> None:
    page = new_page()
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


def test_error_notice_clears_after_reconnecting(new_page, stack: Stack) -> None:
    """With the list API and wsserver down the page says it cannot load history; back up, it says nothing."""
    page = new_page()
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


def test_switching_channels_shows_only_that_channels_messages(new_page, stack: Stack) -> None:
    history_a = {post_to(stack, "a", {"n": i, "on": "a"}) for i in range(3)}
    history_b = {post_to(stack, "b", {"n": i, "on": "b"}) for i in range(3)}
    wait_until(lambda: len(stack.listed()) == 6, what="history persisted")
    page = new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, history_a | history_b)

    page.click("#channels > summary")
    page.check('#channels input[value="a"]')
    wait_until(lambda: set(shown_ids(page)) == history_a, what="only channel a's history")
    page.wait_for_selector("#state[data-state=live]")
    assert parse_qs(urlsplit(page.url).query)["channel"] == ["a"], "the view is not in the URL"
    assert parse_qs(urlsplit(sockets[-1]).query)["channel"] == ["a"], "the server is not asked for channel a alone"
    assert page.text_content("#server") == f"{stack.ws_url}/?channel=a"
    # b's message goes out first: by the time a's arrives, b's would have too.
    post_to(stack, "b", {"live": "on b"})
    live_a = post_to(stack, "a", {"live": "on a"})
    wait_shown(page, {live_a})
    assert_exactly(page, history_a | {live_a})
    assert page.eval_on_selector_all("li.message", "items => items.map(i => i.dataset.channel)") == ["a"] * 4

    page.check('#channels input[value=""]')  # all channels
    page.wait_for_selector("#state[data-state=live]")
    wait_until(lambda: len(shown_ids(page)) == 8, what="every channel's messages again")
    assert "channel" not in parse_qs(urlsplit(page.url).query)
    assert "channel" not in parse_qs(urlsplit(sockets[-1]).query)
    wait_until(lambda: len(stack.listed()) == 8, what="live messages persisted")
    assert_exactly(page, {message["id"] for message in stack.listed()})


def test_channel_in_the_url_is_honoured_on_load_and_the_form_posts_to_it(new_page, stack: Stack) -> None:
    post_to(stack, "a", {"on": "a"})
    on_b = post_to(stack, "b.2:x-y_z", {"on": "b"})
    wait_until(lambda: len(stack.listed()) == 2, what="history persisted")
    page = new_page()
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.goto(f"{stack.list_url}/?channel=b.2:x-y_z")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, {on_b})
    assert page.eval_on_selector_all("#channels input:checked", "boxes => boxes.map(b => b.value)") == ["b.2:x-y_z"]
    assert page.text_content("#channel-summary") == "b.2:x-y_z"
    assert page.text_content("#send-to") == "b.2:x-y_z"
    page.fill("#payload", '{"sent": "to b"}')
    page.click("button[type=submit]")
    wait_until(lambda: len(shown_ids(page)) == 2, what="the form's message on channel b")
    assert '"sent": "to b"' in page.text_content("li.message pre")
    assert page.text_content("#notice") == ""
    assert posts == [f"{stack.ingest_url}/channels/b.2%3Ax-y_z/messages"]
    wait_until(lambda: len(stack.listed()) == 3, what="the form's message stored")
    assert_exactly(page, {m["id"] for m in stack.listed() if m["channel"] == "b.2:x-y_z"})


def test_pause_then_resume_shows_every_message_sent_meanwhile(new_page, stack: Stack) -> None:
    page = new_page()
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    before = {stack.post({"n": i, "kind": "before the pause"}) for i in range(2)}
    wait_shown(page, before)

    page.click("#pause")
    assert page.get_attribute("#pause", "aria-pressed") == "true"
    meanwhile = {stack.post({"n": i, "kind": "while paused"}) for i in range(12)}
    meanwhile |= {post_to(stack, "other", {"n": i, "kind": "while paused, another channel"}) for i in range(3)}
    wait_until(lambda: page.text_content("#paused") == "15 arrived while paused", what="the paused counter")
    assert_exactly(page, before)  # the list held still

    page.click("#pause")
    wait_shown(page, before | meanwhile)
    assert_exactly(page, before | meanwhile)
    assert page.text_content("#paused") == ""
    after = stack.post({"kind": "after resuming"})
    wait_shown(page, before | meanwhile | {after})
    assert_exactly(page, before | meanwhile | {after})


def test_load_older_reaches_the_first_message(new_page, stack: Stack) -> None:
    posted = [stack.post({"n": i}) for i in range(30)]
    wait_until(lambda: len(stack.listed()) == 30, what="30 messages persisted")
    page = new_page()
    page.goto(f"{stack.list_url}/?page=7")
    page.wait_for_selector("#state[data-state=live]")
    # Pages are in position order, each one the 7 just below the bottom row (the newest 7 first).
    stored = [message["id"] for message in stack.listed()]
    wait_until(lambda: set(shown_ids(page)) == set(stored[-7:]), what="the newest page")
    clicks = 0
    while page.is_visible("#older"):
        page.click("#older")
        clicks += 1
        walked = set(stored[-7 * (clicks + 1) :])
        wait_until(lambda walked=walked: set(shown_ids(page)) == walked, what=f"older page {clicks}")
        assert clicks < 10, "load older never reached the first message"
    assert page.text_content("#older-status") == "Reached the first message."
    assert clicks == 4
    assert_exactly(page, set(posted))
    # Older rows at the bottom, live ones on top: the list stays whole.
    live = stack.post({"n": 30})
    wait_shown(page, {live})
    assert_exactly(page, {*posted, live})


def test_chart_moves_under_load(new_page, stack: Stack) -> None:
    page = new_page()
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    page.wait_for_timeout(1100)  # one redraw of the empty chart
    assert page.get_attribute("#rate", "data-total") == "0"
    empty_chart = page.eval_on_selector("#chart", "canvas => canvas.toDataURL()")

    posted: list[str] = []

    def post_for_a_while() -> None:
        for i in range(50):
            posted.append(stack.post({"n": i, "kind": "load"}))
            time.sleep(0.05)

    poster = threading.Thread(target=post_for_a_while)
    poster.start()
    rates = []
    while poster.is_alive():  # the page is driven from this thread alone; requests post from the other
        rates.append(int(page.get_attribute("#rate", "data-rate")))
        page.wait_for_timeout(100)
    poster.join()
    assert len(posted) == 50
    wait_until(lambda: page.get_attribute("#rate", "data-total") == "50", what="the chart counting all 50")
    assert max(rates) > 0, "the rate readout never moved"
    assert re.fullmatch(r"\d+ msg/s", page.text_content("#rate"))
    assert page.eval_on_selector("#chart", "canvas => canvas.toDataURL()") != empty_chart, "the chart did not change"


def test_filter_hides_rows_that_do_not_match(new_page, stack: Stack) -> None:
    apple = post_to(stack, "fruit", {"name": "Apple"})
    banana = post_to(stack, "fruit", {"name": "BANANA", "note": "ripe"})
    leek = post_to(stack, "veg", {"name": "leek"})
    wait_until(lambda: len(stack.listed()) == 3, what="messages persisted")
    page = new_page()
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, {apple, banana, leek})

    page.fill("#filter", "banana")
    wait_until(lambda: visible_ids(page) == {banana}, what="only the banana row")
    assert "2 hidden by the filter" in page.text_content("#counts")
    page.fill("#filter", "VEG")  # a channel, any case
    wait_until(lambda: visible_ids(page) == {leek}, what="only channel veg")
    page.fill("#filter", apple[-6:])  # part of an id
    wait_until(lambda: visible_ids(page) == {apple}, what="only the row with that id")
    later = post_to(stack, "fruit", {"name": "banana bread"})
    page.fill("#filter", "Banana")
    wait_until(lambda: visible_ids(page) == {banana, later}, what="new rows filtered too")
    page.fill("#filter", "nothing like this")
    wait_until(lambda: visible_ids(page) == set(), what="no row")
    assert page.is_visible("#empty") and "No message matches" in page.text_content("#empty")
    page.fill("#filter", "")
    wait_until(lambda: visible_ids(page) == {apple, banana, leek, later}, what="every row back")
    assert_exactly(page, {apple, banana, leek, later})


def test_rows_expand_to_pretty_json_and_copy_their_id(new_page, stack: Stack) -> None:
    message = stack.post({"order": 7, "items": [{"sku": "x-1", "qty": 2}]})
    wait_until(lambda: len(stack.listed()) == 1, what="message persisted")
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    page.goto(f"{stack.list_url}/")
    page.wait_for_selector("#state[data-state=live]")
    wait_shown(page, {message})
    row = page.locator(f'li.message[data-id="{message}"]')
    assert row.locator("button.preview").text_content() == '{"order": 7, "items": [{"sku": "x-1", "qty": 2}]}'
    assert row.locator(".offset").text_content() == "#1"  # the first message of its channel
    assert not row.locator("pre").is_visible()
    row.locator("button.preview").click()
    assert row.locator("pre").is_visible()
    assert row.locator("pre").text_content() == json.dumps({"order": 7, "items": [{"sku": "x-1", "qty": 2}]}, indent=2)
    assert row.locator("button.preview").get_attribute("aria-expanded") == "true"
    row.locator("button.copy").click()
    wait_until(lambda: row.locator("button.copy").text_content() == "copied", what="the copy confirmation")
    assert page.evaluate("navigator.clipboard.readText()") == message
    row.locator("button.preview").click()
    assert not row.locator("pre").is_visible()


def test_dark_mode_follows_the_system_setting(new_page, stack: Stack) -> None:
    colours = (
        "() => [getComputedStyle(document.documentElement).backgroundColor, getComputedStyle(document.body).color]"
    )
    looks = {}
    for scheme in ("light", "dark"):
        page = new_page(color_scheme=scheme)
        page.goto(f"{stack.list_url}/")
        page.wait_for_selector("#state[data-state=live]")
        looks[scheme] = page.evaluate(colours)
    assert looks["light"] == ["rgb(245, 246, 248)", "rgb(29, 35, 48)"]
    assert looks["dark"][0] != looks["light"][0] and looks["dark"][1] != looks["light"][1]
    background, text = ([int(c) for c in re.findall(r"\d+", colour)] for colour in looks["dark"])
    assert sum(background) < 150 < sum(text), f"dark mode is not dark: {looks['dark']}"


def test_page_pictures_light_and_dark(new_page, stack: Stack) -> None:
    """A busy page in both colour schemes and on a phone; with UPDATE_SCREENSHOT=1 they become docs/screenshot*.png."""
    channels = {
        "orders": lambda i: {
            "order": 10230 + i,
            "customer": f"c-{880 + i % 7}",
            "total": round(12.5 + i * 3.7, 2),
            "currency": "EUR",
        },
        "sensors.eu-west": lambda i: {
            "sensor": f"t-{17 + i % 3}",
            "temperature": round(20.5 + (i % 5) * 0.3, 1),
            "humidity": 0.43,
        },
        "audit": lambda i: {
            "actor": ["alice", "bob", "chen"][i % 3],
            "action": ["login", "export", "logout"][i % 3],
            "ip": f"10.0.4.{12 + i % 9}",
        },
        "dummy": lambda i: {"hello": "world", "n": i},
    }
    names = list(channels)
    for i in range(8):
        post_to(stack, names[i % 4], channels[names[i % 4]](i))
    wait_until(lambda: len(stack.listed()) == 8, what="history persisted")
    looks = {
        "screenshot.png": {"color_scheme": "light", "viewport": {"width": 1000, "height": 760}},
        "screenshot-dark.png": {"color_scheme": "dark", "viewport": {"width": 1000, "height": 760}},
        "screenshot-phone.png": {"color_scheme": "light", "viewport": {"width": 390, "height": 844}, "is_mobile": True},
    }
    pages = {}
    for name, options in looks.items():
        pages[name] = new_page(**options)
        pages[name].goto(f"{stack.list_url}/")
        pages[name].wait_for_selector("#state[data-state=live]")
    # A burst that rises and falls, so the chart has a shape.
    for second, count in enumerate([2, 5, 9, 14, 10, 6, 11, 4]):
        for i in range(count):
            channel = names[(second + i) % 4]
            post_to(stack, channel, channels[channel](second * 10 + i))
            time.sleep(0.9 / count)
    for name, page in pages.items():
        wait_until(lambda page=page: len(shown_ids(page)) == 8 + 61, what=f"every message on the page of {name}")
        page.locator("li.message button.preview").nth(1).click()
        page.wait_for_selector("li.message time.stored[datetime]")  # the expanded row's stored time
        page.wait_for_timeout(1100)  # a chart redraw with the last second in
        shot = page.screenshot(animations="disabled")
        assert len(shot) > 10_000
        if os.environ.get("UPDATE_SCREENSHOT"):
            (ROOT / "docs" / name).write_bytes(shot)


def test_page_with_tokens_lists_channels_subscribes_and_posts_with_its_token(
    new_page, sqlite_url: str, redis_url: str, log_dir: Path
) -> None:
    """With ``API_TOKENS`` on, ``?token=`` carries the page through every call: channels, listing, socket, post."""
    clear_database(sqlite_url)
    token = "page-token-1"
    auth = {"Authorization": f"Bearer {token}"}
    with running_stack(sqlite_url, redis_url, log_dir, with_ws=True, env={"API_TOKENS": token}) as stack:
        history = requests.post(f"{stack.ingest_url}/channels/t/messages", json={"h": 1}, headers=auth, timeout=5)
        assert history.status_code == 202
        assert requests.post(f"{stack.ingest_url}/channels/t/messages", json={}, timeout=5).status_code == 401
        wait_until(
            lambda: len(requests.get(f"{stack.list_url}/messages", headers=auth, timeout=5).json()["data"]) == 1,
            what="history persisted",
        )
        page = new_page()
        page.goto(f"{stack.list_url}/?channel=t&token={token}")
        page.wait_for_selector("#state[data-state=live]")
        wait_shown(page, {history.json()["id"]})
        assert page.eval_on_selector_all("#channels input", "boxes => boxes.map(b => b.value)").count("t") == 1
        assert token not in page.text_content("#server"), "the token is shown on the page"
        live = requests.post(f"{stack.ingest_url}/channels/t/messages", json={"l": 1}, headers=auth, timeout=5)
        wait_shown(page, {history.json()["id"], live.json()["id"]})
        page.fill("#payload", '{"from": "the page"}')
        page.click("#send button[type=submit]")
        wait_until(lambda: len(shown_ids(page)) == 3, what="the page's own message, live")

        def stored() -> list[dict]:
            return requests.get(f"{stack.list_url}/channels/t/messages", headers=auth, timeout=5).json()["data"]

        wait_until(lambda: len(stored()) == 3, what="the page's message stored in channel t")
        assert {"from": "the page"} in [message["payload"] for message in stored()]
