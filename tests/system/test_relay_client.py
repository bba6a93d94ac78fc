"""The clients of live delivery, against the real stack: relay-client.js in Chromium, clients/relay_client.py.

Each follows a steady stream of messages while a TCP proxy in front of the
websocket server cuts every connection mid-stream (and refuses new ones for a
moment): afterwards each has every message, history included, exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from clients.relay_client import follow
from tests.helpers import wait_until
from tests.stack import Stack
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e]

STREAM = 240  # messages published while the client follows
CUT_AT = 80  # the proxy cuts every connection after this many


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    return start_stack(with_ws=True)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[TcpProxy]:
    """A proxy in front of the websocket server: clients connect to ``ws://127.0.0.1:<proxy.port>``."""
    started = TcpProxy("127.0.0.1", stack.ws_port).start()
    yield started
    started.stop()


def publish_with_a_cut(stack: Stack, proxy: TcpProxy, published: list[str]) -> threading.Thread:
    """Publish ``STREAM`` messages in a thread; after ``CUT_AT``, drop every live connection for 1 s."""

    def run() -> None:
        for n in range(STREAM):
            published.append(stack.post({"n": n, "kind": "stream"}))
            if n == CUT_AT:
                proxy.cut()
                threading.Timer(1.0, proxy.restore).start()
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def history(stack: Stack, count: int) -> list[str]:
    ids = [stack.post({"n": n, "kind": "history"}) for n in range(count)]
    wait_until(lambda: {m["id"] for m in stack.listed()} >= set(ids), what="history stored")
    return ids


def test_relay_client_js_is_served_by_the_list_api_as_a_module(stack: Stack) -> None:
    response = requests.get(f"{stack.list_url}/relay-client.js", headers={"Origin": "null"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.headers["Access-Control-Allow-Origin"] == "*"  # a page from file:// or elsewhere imports it
    assert "export class RelayClient" in response.text


BROWSER_FOLLOW = """async ([api, ws]) => {
  const { RelayClient } = await import("/relay-client.js");
  window.got = [];
  window.states = [];
  const client = new RelayClient({ api, ws, minDelay: 100, maxDelay: 500 });
  client.addEventListener("history", (e) => window.got.push(...e.detail.messages.map((m) => m.id)));
  client.addEventListener("message", (e) => window.got.push(e.detail.message.id));
  client.addEventListener("state", (e) => window.states.push(e.detail.state));
  client.start();
  window.client = client;
}"""


@pytest.mark.browser
def test_browser_client_loses_and_repeats_nothing_across_a_forced_disconnect(
    browser, stack: Stack, proxy: TcpProxy
) -> None:
    before = history(stack, 5)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.list_url}/healthz")  # any page of the list API's origin, to import the module from
    page.evaluate(BROWSER_FOLLOW, [stack.list_url, f"ws://127.0.0.1:{proxy.port}"])
    wait_until(lambda: "live" in page.evaluate("window.states"), what="the client live")
    published: list[str] = []
    publish_with_a_cut(stack, proxy, published).join(timeout=60)
    expected = set(before) | set(published)
    wait_until(lambda: set(page.evaluate("window.got")) >= expected, timeout=30, what="every message in the page")
    time.sleep(1)  # room for a late duplicate to show
    got, states = page.evaluate("[window.got, window.states]")
    page.evaluate("window.client.close()")
    page.close()
    assert not errors
    assert len(got) == len(set(got)), "a message was handed out twice"
    assert set(got) >= expected
    assert "disconnected" in states and states[-1] == "live", states
    assert proxy.accepted >= 2, "the cut did not force a reconnect"


async def collect(api: str, ws: str, expected: Callable[[], set[str]], done: threading.Event) -> list[str]:
    """Follow until every expected id came (and the publisher finished), then 1 s more for duplicates."""
    got: list[str] = []

    async def consume() -> None:
        async for message in follow(api, ws, min_delay=0.1, max_delay=0.5):
            got.append(message["id"])

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 60
    while not (done.is_set() and set(got) >= expected()) and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return got


def test_python_client_loses_and_repeats_nothing_across_a_forced_disconnect(stack: Stack, proxy: TcpProxy) -> None:
    before = history(stack, 5)
    published: list[str] = []
    done = threading.Event()

    def publish_later() -> None:
        time.sleep(1.0)  # the client has listed and connected by then
        publish_with_a_cut(stack, proxy, published).join(timeout=60)
        done.set()

    threading.Thread(target=publish_later, daemon=True).start()
    ws = f"ws://127.0.0.1:{proxy.port}"
    # A loop of its own in a thread: Playwright's sync API keeps one set in this thread for the module.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        got = pool.submit(asyncio.run, collect(stack.list_url, ws, lambda: set(before) | set(published), done)).result()
    assert len(published) == STREAM
    assert len(got) == len(set(got)), "a message was yielded twice"
    assert set(got) >= set(before) | set(published)
    assert proxy.accepted >= 2, "the cut did not force a reconnect"


def test_python_client_backfills_after_a_reset(stack: Stack) -> None:
    """The server lost its window while the client was away: on reset, the client lists what it missed."""
    published: list[str] = []
    done = threading.Event()

    def publish_across_a_lost_window() -> None:
        time.sleep(1.0)
        published.extend(stack.post({"n": n, "kind": "seen live"}) for n in range(3))
        time.sleep(0.5)
        stack.services["wsserver"].stop()
        missed = [stack.post({"n": n, "kind": "missed"}) for n in range(3)]
        published.extend(missed)
        wait_until(lambda: {m["id"] for m in stack.listed()} >= set(missed), what="missed messages stored")
        redis.Redis.from_url(stack.env["REDIS_URL"]).delete("messages:live")  # the window is gone, as if Redis was lost
        stack.start_wsserver()
        time.sleep(2.0)  # reconnected (backoff at most 0.5 s), reset, refilled, live again
        published.extend(stack.post({"n": n, "kind": "later"}) for n in range(2))
        done.set()

    threading.Thread(target=publish_across_a_lost_window, daemon=True).start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        got = pool.submit(asyncio.run, collect(stack.list_url, stack.ws_url, lambda: set(published), done)).result()
    assert len(published) == 8
    assert len(got) == len(set(got)), "a message was yielded twice"
    assert set(got) >= set(published)
