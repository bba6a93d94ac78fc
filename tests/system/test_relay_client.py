"""The clients of live delivery, against the real stack: relay-client.js in Chromium, clients/relay_client.py.

Each follows a steady stream of messages while a TCP proxy in front of the
websocket server cuts every connection mid-stream (and refuses new ones for a
moment): afterwards each has every message, history included, exactly once,
in position order (the one number both clients resume from).
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


def post(stack: Stack, channel: str, payload: dict) -> str:
    """Publish to ``channel``; the message's id."""
    response = requests.post(f"{stack.ingest_url}/channels/{channel}/messages", json=payload, timeout=5)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def publish_with_a_cut(
    stack: Stack, proxy: TcpProxy, published: list[str], channels: tuple[str, ...] = ("dummy",)
) -> threading.Thread:
    """Publish ``STREAM`` messages in a thread, to ``channels`` in turn, their ids to ``published``; after
    ``CUT_AT``, drop every live connection for 1 s."""

    def run() -> None:
        for n in range(STREAM):
            published.append(post(stack, channels[n % len(channels)], {"n": n, "kind": "stream"}))
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
  window.positions = [];
  window.states = [];
  const client = new RelayClient({ api, ws, minDelay: 100, maxDelay: 500 });
  const got = (m) => { window.got.push(m.id); window.positions.push(m.position); };
  client.addEventListener("history", (e) => e.detail.messages.forEach(got));
  client.addEventListener("message", (e) => got(e.detail.message));
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
    got, positions, states = page.evaluate("[window.got, window.positions, window.states]")
    resumed_from = page.evaluate("window.client.position")
    page.evaluate("window.client.close()")
    page.close()
    assert not errors
    assert len(got) == len(set(got)), "a message was handed out twice"
    assert set(got) >= expected
    assert positions == sorted(set(positions)), "not in position order"
    assert resumed_from == positions[-1]
    assert "disconnected" in states and states[-1] == "live", states
    assert proxy.accepted >= 2, "the cut did not force a reconnect"


async def collect(
    api: str, ws: str, expected: Callable[[], set[str]], done: threading.Event, channels: list[str] | None = None
) -> list[dict]:
    """Follow until every expected id came (and the publisher finished), then 1 s more for duplicates."""
    got: list[dict] = []

    async def consume() -> None:
        async for message in follow(api, ws, channels=channels or [], min_delay=0.1, max_delay=0.5):
            got.append(message)

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 60
    while not (done.is_set() and ids(got) >= expected()) and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return got


def ids(messages: list[dict]) -> set[str]:
    return {message["id"] for message in messages}


def assert_each_once_in_order(got: list[dict], expected: set[str], earlier: set[str] = frozenset()) -> None:
    """Every expected message once, in position order, and nothing else but ``earlier`` history."""
    assert len(got) == len(ids(got)), "a message was yielded twice"
    assert ids(got) >= expected, f"missing {expected - ids(got)}"
    assert ids(got) - expected <= earlier, f"unexpected {ids(got) - expected - earlier}"
    positions = [message["position"] for message in got]
    assert positions == sorted(positions), "not in position order"


@pytest.mark.parametrize(
    "channels", [(), ("a",), ("a", "b")], ids=["every channel", "one channel", "two channels of three"]
)
def test_python_client_loses_and_repeats_nothing_across_a_forced_disconnect(
    stack: Stack, proxy: TcpProxy, channels: tuple[str, ...]
) -> None:
    earlier = {m["id"] for m in stack.listed()}  # the other tests' history, of these channels too
    publishing = (*channels, "c") if channels else ("dummy",)  # c: published too, never followed
    followed = set(channels or publishing)
    posted = [(channel, post(stack, channel, {"n": n, "kind": "history"})) for n, channel in enumerate(publishing * 2)]
    wait_until(lambda: {m["id"] for m in stack.listed()} >= {i for _, i in posted}, what="history stored")
    before = {i for channel, i in posted if channel in followed}
    published: list[str] = []
    done = threading.Event()

    def publish_later() -> None:
        time.sleep(1.0)  # the client has listed and connected by then
        publish_with_a_cut(stack, proxy, published, publishing).join(timeout=60)
        done.set()

    def expected() -> set[str]:  # the n-th message published went to publishing[n % len(publishing)]
        return before | {i for n, i in enumerate(published) if publishing[n % len(publishing)] in followed}

    threading.Thread(target=publish_later, daemon=True).start()
    ws = f"ws://127.0.0.1:{proxy.port}"
    # A loop of its own in a thread: Playwright's sync API keeps one set in this thread for the module.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        got = pool.submit(asyncio.run, collect(stack.list_url, ws, expected, done, list(channels))).result()
    assert len(published) == STREAM
    assert all(message["channel"] in followed for message in got if channels)
    assert_each_once_in_order(got, expected(), earlier)
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
    assert_each_once_in_order(got, ids(got) | set(published))  # (with the other tests' history before)
    assert ids(got) >= set(published)
