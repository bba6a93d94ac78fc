"""Order and position end to end (issue 22): history in accept order, one position for listing and live.

Real processes: two gunicorn processes for the ingestion API (a client's
consecutive requests reach different ones, each with its own group commit
and task sender: what used to reorder the history), the list API, Celery
workers and a wsserver, on SQLite and MariaDB.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from sqlalchemy.engine import make_url
from websockets.sync.client import connect as ws_connect

from relay.broker.contract import make_celery
from relay.settings import load_settings
from tests.helpers import celery_worker, clear_database, wait_until
from tests.stack import Stack, running_stack
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
# A worker's log line once its consumer runs and it has seeded the position counters (relay/worker/tasks.py).
SEEDED = "position counters seeded"


def active_tasks(stack: Stack) -> int:
    """Task messages the workers are running, as ``celery inspect active`` reports them."""
    app = make_celery(load_settings(redis_url=stack.env["REDIS_URL"]))
    return sum(len(tasks) for tasks in (app.control.inspect(timeout=1.0).active() or {}).values())


def channel_listing(stack: Stack, channel: str, **params: object) -> list[dict]:
    """Every message of ``channel`` listed now, walked with cursors as a client does."""
    messages, cursor = [], None
    while True:
        query = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{stack.list_url}/channels/{channel}/messages", params=query, timeout=10).json()
        messages += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return messages


def publish(stack: Stack, channel: str, body: object, batch: bool = False) -> requests.Response:
    path = f"/channels/{channel}/messages" + ("/batch" if batch else "")
    response = requests.post(stack.ingest_url + path, data=orjson.dumps(body), timeout=10,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 202, response.text
    return response


@pytest.fixture
def stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    with running_stack(database_url, redis_url, log_dir, web_workers=2) as stack:
        yield stack


def test_sequential_sends_are_listed_in_send_order_with_consecutive_offsets(stack: Stack) -> None:
    """Singles, a batch and two channels interleaved, each answered before the next is sent, on two API processes."""
    sent: dict[str, list[int]] = {"seq": [], "other": []}
    answered: dict[str, list[int]] = {"seq": [], "other": []}
    n = 0

    def one(channel: str) -> None:
        nonlocal n
        response = publish(stack, channel, {"n": n})
        sent[channel].append(n)
        answered[channel].append(response.json()["offset"])
        # Read your writes: the Location answers at once, stored or still pending, with the same offset.
        located = requests.get(response.headers["Location"], timeout=5)
        assert located.status_code == 200, located.text
        assert located.json()["offset"] == response.json()["offset"]
        n += 1

    for _ in range(20):
        one("seq")
    batch = list(range(n, n + 5))
    response = publish(stack, "seq", [{"n": k} for k in batch], batch=True)
    sent["seq"] += batch
    answered["seq"] += response.json()["offsets"]
    n += 5
    for i in range(10):
        one("seq" if i % 2 else "other")

    wait_until(lambda: len(channel_listing(stack, "seq")) == len(sent["seq"]), timeout=30, what="all stored")
    listed = channel_listing(stack, "seq")
    print("listed:", [m["payload"]["n"] for m in listed])
    assert [m["payload"]["n"] for m in listed] == sent["seq"]
    assert [m["offset"] for m in listed] == list(range(1, len(sent["seq"]) + 1)) == answered["seq"]
    wait_until(lambda: len(channel_listing(stack, "other")) == 5, timeout=30, what="other stored")
    other = channel_listing(stack, "other")
    assert [m["payload"]["n"] for m in other] == sent["other"]
    assert [m["offset"] for m in other] == [1, 2, 3, 4, 5] == answered["other"]
    # The all-channels listing is the global order: restricted to one channel, it is that channel's listing.
    everything = requests.get(f"{stack.list_url}/messages", params={"limit": 1000}, timeout=10).json()["data"]
    assert [m["payload"]["n"] for m in everything] == list(range(n))
    positions = [m["position"] for m in everything]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert [m["id"] for m in everything if m["channel"] == "seq"] == [m["id"] for m in listed]
    # Newest first is the exact reverse.
    newest = channel_listing(stack, "seq", order="desc")
    assert [m["offset"] for m in newest] == [m["offset"] for m in reversed(listed)]


@pytest.fixture
def live_stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    with running_stack(database_url, redis_url, log_dir, with_ws=True, web_workers=2) as stack:
        yield stack


def test_history_order_equals_live_order_under_four_concurrent_senders(live_stack: Stack) -> None:
    """What a websocket client watched arrive is what the history lists, offset by offset."""
    stack, per_sender, senders = live_stack, 50, 4
    total = per_sender * senders
    live: list[dict] = []
    ready = threading.Event()

    def watch() -> None:
        with ws_connect(f"{stack.ws_url}/?channel=c") as socket:
            while len(live) < total:
                frame = orjson.loads(socket.recv(timeout=30))
                if frame.get("type") == "ready":
                    ready.set()
                elif "id" in frame:
                    live.append(frame)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)

    def sender(k: int) -> None:
        for i in range(per_sender):
            publish(stack, "c", {"sender": k, "i": i})

    with concurrent.futures.ThreadPoolExecutor(senders) as pool:
        list(pool.map(sender, range(senders)))
    watcher.join(30)
    assert len(live) == total
    wait_until(lambda: len(channel_listing(stack, "c")) == total, timeout=30, what="all stored")
    listed = channel_listing(stack, "c")
    assert [m["id"] for m in listed] == [m["id"] for m in live]
    assert [m["offset"] for m in live] == list(range(1, total + 1))
    # Each sender's own messages keep their send order too.
    for k in range(senders):
        assert [m["payload"]["i"] for m in listed if m["payload"]["sender"] == k] == list(range(per_sender))


def test_a_follower_waits_for_a_gap_held_by_a_killed_worker_then_gets_it(
    mysql_url: str, redis_url: str, log_dir: Path
) -> None:
    """Worker A takes message 1 and hangs on its database; B stores 2..6; the follower stops before 1.

    Then A is killed: its record comes back from the pending set (the
    reconciler, after PENDING_GRACE_SECONDS), B stores it, and the follower
    continues from where it stopped with 1..6, nothing skipped, nothing twice.
    """
    clear_database(mysql_url)
    server = make_url(mysql_url)
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 3306).start()
    through_proxy = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    grace = "2"
    env = {"PENDING_GRACE_SECONDS": grace}
    try:
        with running_stack(mysql_url, redis_url, log_dir, env=env, with_worker=False) as stack:
            # A: one pool process holding one task message at a time (prefetch of one message's bytes).
            worker_a = {"SQLALCHEMY_DATABASE_URI": through_proxy, "WORKER_PREFETCH_BYTES": "1"}
            a = celery_worker("worker-a", {**stack.env, **worker_a}, log_dir, concurrency=1).start()
            stack.services["worker-a"] = a
            wait_until(lambda: SEEDED in a.log(), timeout=30, what="worker A ready")
            proxy.freeze()
            first = publish(stack, "g", {"n": 1}).json()
            wait_until(lambda: active_tasks(stack) == 1, timeout=15, what="A to take message 1 (and hang)")
            b = celery_worker("worker-b", stack.env, log_dir, concurrency=1).start()
            stack.services["worker-b"] = b
            wait_until(lambda: SEEDED in b.log(), timeout=30, what="worker B ready")
            rest = [publish(stack, "g", {"n": n}).json() for n in range(2, 7)]

            def stored(message: dict) -> bool:
                got = requests.get(f"{stack.list_url}/messages/{message['id']}", timeout=10).json()
                return got["persisted_at"] is not None

            wait_until(lambda: all(stored(m) for m in rest), timeout=30, what="B to store 2..6")
            # The follower, asking from the start, gets nothing past the gap.
            page = requests.get(f"{stack.list_url}/channels/g/messages", timeout=10).json()
            assert page["data"] == [] and page["has_more"] is False
            everything = requests.get(f"{stack.list_url}/messages", timeout=10).json()
            assert everything["data"] == []
            held = requests.get(f"{stack.list_url}/messages/{first['id']}", timeout=10).json()
            assert held["persisted_at"] is None and held["offset"] == 1

            a.kill()
            proxy.thaw()
            followed: list[dict] = []
            cursor = page["next_cursor"]

            def follow() -> int:
                nonlocal cursor
                params = {"cursor": cursor} if cursor else {}
                step = requests.get(f"{stack.list_url}/channels/g/messages", params=params, timeout=10).json()
                followed.extend(step["data"])
                cursor = step["next_cursor"]
                return len(followed)

            wait_until(lambda: follow() >= 6, timeout=60, what="the follower past the gap")
            assert [m["payload"]["n"] for m in followed] == [1, 2, 3, 4, 5, 6]
            assert [m["offset"] for m in followed] == [1, 2, 3, 4, 5, 6]
    finally:
        proxy.stop()
