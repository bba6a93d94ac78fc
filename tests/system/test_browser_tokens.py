"""The live page in real Chromium with a signed token limited to one channel (``JWT_SECRET`` on the stack)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import jwt
import pytest
import redis

from relay.broker.producer import Producer
from relay.records import make_record, utc_now
from tests.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SECRET = "page-test-secret-of-at-least-32-bytes"


def token(channels: dict[str, list[str]], ttl: float = 300) -> str:
    return jwt.encode({"sub": "reader-42", "exp": int(time.time() + ttl), "channels": channels}, SECRET, "HS256")


ORDERS_42 = {"orders.42": ["subscribe", "history"]}


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    return start_stack(with_ws=True, env={"JWT_SECRET": SECRET})


@pytest.fixture
def publish(stack: Stack) -> Callable[[str], str]:
    """Publish one message to a channel straight onto the queue and live stream; return its id."""
    producer = Producer(redis.Redis.from_url(stack.env["REDIS_URL"]), "persist", "messages:live", 10_000, 60)

    def send(channel: str) -> str:
        record = make_record({"to": channel}, utc_now(), channel=channel)
        producer.enqueue([record], {})
        return record["id"]

    return send


@pytest.fixture
def page(browser) -> Iterator:
    """A page that fails the test on a script error."""
    errors: list[str] = []
    opened = browser.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    opened.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def sockets(page) -> list:
    """Every websocket the page opens."""
    opened: list = []
    page.on("websocket", lambda socket: opened.append(socket))
    return opened


def shown_ids(page) -> set[str]:
    return set(page.eval_on_selector_all("li.message", "items => items.map(i => i.dataset.id)"))


def test_page_with_a_token_for_one_channel_shows_its_messages_live(page, stack: Stack, publish) -> None:
    page.goto(f"{stack.list_url}/?channel=orders.42&token={token(ORDERS_42)}")
    page.wait_for_selector("#state[data-state=live]")
    mine, other = publish("orders.42"), publish("orders.43")
    page.wait_for_selector(f"li.message[data-id='{mine}']")
    assert other not in shown_ids(page)
    assert page.text_content("#reason") == ""
    assert page.get_attribute("#notice", "data-kind") != "refused"


def test_page_pointed_at_a_forbidden_channel_says_so_and_does_not_retry(page, sockets, stack: Stack) -> None:
    page.goto(f"{stack.list_url}/?channel=orders.43&token={token(ORDERS_42)}")
    page.wait_for_selector("#state[data-state=refused]")
    assert page.text_content("#reason") == "This token may not subscribe to the channel orders.43."
    page.wait_for_timeout(3000)  # longer than a few reconnect delays
    assert len(sockets) == 1, "the page keeps knocking with a token that cannot get in"
    assert page.text_content("#state") == "refused"
    # The list API refuses the channel's history too (403), and the page says that plainly as well.
    page.wait_for_selector("#notice[data-kind=refused]")
    assert page.text_content("#notice") == "This token may not read the history of the channel orders.43."


def test_page_whose_token_expires_says_so_and_does_not_retry(page, sockets, stack: Stack) -> None:
    page.goto(f"{stack.list_url}/?channel=orders.42&token={token(ORDERS_42, ttl=3)}")
    page.wait_for_selector("#state[data-state=live]")
    page.wait_for_selector("#state[data-state=refused]", timeout=10_000)
    assert "token has expired" in page.text_content("#reason")
    assert "cannot get a new one itself" in page.text_content("#reason")
    page.wait_for_timeout(2000)
    assert len(sockets) == 1
