"""The live page's layout and details in real Chromium, at desktop and phone sizes, light and dark."""

from __future__ import annotations

import itertools
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.helpers import wait_until
from tests.stack import Stack
from tests.system.test_browser import assert_exactly, new_page, post_to, shown_ids, stack, wait_shown  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

DESKTOP = {"viewport": {"width": 1000, "height": 760}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
# Both sizes and both schemes, without running every test four times.
LOOKS = [pytest.param("desktop", "light", id="desktop-light"), pytest.param("phone", "dark", id="phone-dark")]


def open_page(new_page, stack: Stack, size: str, scheme: str, query: str = ""):  # noqa: F811
    page = new_page(color_scheme=scheme, **SIZES[size])
    page.goto(f"{stack.list_url}/{query}")
    page.wait_for_selector("#state[data-state=live]")
    return page


def open_picker(page) -> None:
    if not page.eval_on_selector("#channels", "picker => picker.open"):
        page.click("#channels > summary")


def test_fresh_page_counts_no_reconnect_until_the_connection_drops(new_page, stack: Stack) -> None:  # noqa: F811
    """The catch-up after an empty first listing reconnects inside the page: that is no reconnect."""
    history = {stack.post({"n": i}) for i in range(3)}
    wait_until(lambda: len(stack.listed()) == 3, what="history persisted")
    for size, scheme in (("desktop", "light"), ("phone", "dark")):
        page = new_page(color_scheme=scheme, **SIZES[size])
        listings: list[str] = []

        def first_listing_empty(route, request, listings=listings) -> None:
            """As if nothing was stored yet at the first look: the page lists again once live, then resumes."""
            listings.append(request.url)
            if len(listings) == 1:
                route.fulfill(json={"data": [], "has_more": False, "next_cursor": None})
            else:
                route.continue_()

        page.route(re.compile(r".*/messages\?.*"), first_listing_empty)
        page.goto(f"{stack.list_url}/")
        page.wait_for_selector("#state[data-state=live]")
        wait_shown(page, history)
        page.wait_for_timeout(500)  # the catch-up connection has happened by now
        assert len(listings) >= 2, "the page did not list again"
        assert page.text_content("#reconnects") == "0", f"a fresh {size} page counts a reconnect"
    stack.services["wsserver"].stop()
    page.wait_for_selector("#state[data-state=disconnected]")
    page.wait_for_timeout(2000)  # a few failed attempts: they are not reconnects
    stack.start_wsserver()
    page.wait_for_selector("#state[data-state=live]", timeout=15_000)
    assert page.text_content("#reconnects") == "1"


@pytest.mark.parametrize(("size", "scheme"), list(itertools.product(SIZES, ("light", "dark"))))
def test_first_message_is_near_the_top_and_nothing_is_cut(new_page, stack: Stack, size: str, scheme: str) -> None:  # noqa: F811
    """On a phone the chart and connection panel fold away; titles and the filter's hint fit their boxes."""
    posted = {
        stack.post({"n": i, "text": "a payload long enough to fill a phone's row and then some"}) for i in range(3)
    }
    wait_until(lambda: len(stack.listed()) == 3, what="history persisted")
    page = open_page(new_page, stack, size, scheme)
    wait_shown(page, posted)
    first_row = page.eval_on_selector("li.message", "row => row.getBoundingClientRect().top")
    if size == "phone":
        assert first_row < 300, f"the first message starts {first_row:.0f} px down a phone screen"
        assert not page.is_visible("#chart"), "the chart takes a phone's first screen"
        page.click("#panels > summary")
    assert page.is_visible("#chart") and page.is_visible("#reconnects")
    # The chart's title and its rate share one line.
    heights = page.evaluate("""() => {
        const h2 = document.querySelector("#chart-title").closest("h2");
        return [h2.getBoundingClientRect().height, parseFloat(getComputedStyle(h2).lineHeight) || 0,
                parseFloat(getComputedStyle(h2).fontSize)];
    }""")
    assert heights[0] < 2 * heights[2], f"the chart's title wraps: {heights}"
    # The filter's placeholder fits in the box, measured in the box's own font.
    room = page.eval_on_selector(
        "#filter",
        """input => {
            const style = getComputedStyle(input);
            const context = document.createElement("canvas").getContext("2d");
            context.font = `${style.fontSize} ${style.fontFamily}`;
            const inner = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
            return [context.measureText(input.placeholder).width, inner - 20];  // 20: the search cancel button
        }""",
    )
    assert room[0] <= room[1], f"the filter's placeholder is cut: {room}"
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), "the page scrolls sideways"


@pytest.mark.parametrize(("size", "scheme"), LOOKS)
def test_picker_counts_follow_new_messages_while_open(new_page, stack: Stack, size: str, scheme: str) -> None:  # noqa: F811
    for i in range(2):
        post_to(stack, "a", {"n": i})
    post_to(stack, "b", {"n": 0})
    wait_until(lambda: len(stack.listed()) == 3, what="history persisted")
    page = open_page(new_page, stack, size, scheme)
    open_picker(page)
    count = '#channels label[data-channel="{}"] .count'
    wait_until(lambda: page.text_content(count.format("a")) == "2", what="a's count")
    assert page.text_content(count.format("b")) == "1"
    for i in range(3):
        post_to(stack, "a", {"n": 2 + i})
    post_to(stack, "c", {"n": 0})
    wait_until(lambda: page.text_content(count.format("a")) == "5", timeout=15, what="a's count, refreshed")
    wait_until(lambda: page.text_content(count.format("c")) == "1", what="the new channel c, counted")
    assert page.text_content(count.format("b")) == "1"


CHANNELS = ["orders", "sensors.eu-west", "audit", "dummy", "billing", "users", "payments.eu", "logs", "alerts"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_each_channel_shown_has_its_own_colour(new_page, stack: Stack, scheme: str) -> None:  # noqa: F811
    """Badges differ clearly (not merely by a few degrees of hue) for every channel on the page."""
    for channel in CHANNELS:
        post_to(stack, channel, {"on": channel})
    wait_until(lambda: len(stack.listed()) == len(CHANNELS), what="history persisted")
    page = open_page(new_page, stack, "desktop", scheme)
    wait_until(lambda: len(shown_ids(page)) == len(CHANNELS), what="every channel's message")
    looks = page.eval_on_selector_all(
        "li.message .chan",
        "badges => badges.map(b => [b.textContent, getComputedStyle(b).backgroundColor, getComputedStyle(b).color])",
    )

    colours = {name: (rgb(background), rgb(text)) for name, background, text in looks}
    assert sorted(colours) == sorted(CHANNELS)
    for (one, first), (other, second) in itertools.combinations(colours.items(), 2):
        apart = max(delta_e(first[0], second[0]), delta_e(first[1], second[1]))
        assert apart >= 12, f"{one} and {other} look alike in {scheme}: {first} and {second} (delta E {apart:.1f})"


def rgb(colour: str) -> tuple[float, ...]:
    return tuple(float(part) for part in colour[colour.index("(") + 1 : -1].split(",")[:3])


def delta_e(one: tuple[float, ...], other: tuple[float, ...]) -> float:
    """How far apart two sRGB colours look (CIE76 in Lab: about 2.3 is just noticeable)."""

    def lab(colour: tuple[float, ...]) -> tuple[float, float, float]:
        r, g, b = ((c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour)
        x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
        y = 0.2126 * r + 0.7152 * g + 0.0722 * b
        z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
        f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
        return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])

    return sum((p - q) ** 2 for p, q in zip(lab(one), lab(other), strict=True)) ** 0.5


@pytest.mark.parametrize(("size", "scheme"), LOOKS)
def test_expanded_row_shows_full_id_and_received_and_stored_times(
    new_page,  # noqa: F811
    stack: Stack,  # noqa: F811
    size: str,
    scheme: str,
) -> None:
    stored = stack.post({"kind": "history"})
    wait_until(lambda: len(stack.listed()) == 1, what="history persisted")
    page = open_page(new_page, stack, size, scheme)
    wait_shown(page, {stored})
    live = stack.post({"kind": "live"})
    wait_shown(page, {live})
    for message_id in (stored, live):  # one listed with its times, one seen live before it was stored
        wait_until(lambda message_id=message_id: message_id in {m["id"] for m in stack.listed()}, what="stored")
        expected = requests.get(f"{stack.list_url}/messages/{message_id}", timeout=5).json()
        row = page.locator(f'li.message[data-id="{message_id}"]')
        row.locator("button.preview").click()
        details = row.locator(".meta")
        assert details.is_visible()
        assert details.locator(".full-id").text_content() == message_id
        assert details.locator("time.received").get_attribute("datetime") == expected["received_at"]
        wait_until(
            lambda details=details, expected=expected: (
                details.locator("time.stored").get_attribute("datetime") == expected["persisted_at"]
            ),
            what="the stored time",
        )
        assert details.locator("time.stored").text_content().strip()
        box = details.bounding_box()
        assert box and box["x"] + box["width"] <= SIZES[size]["viewport"]["width"], "the details overflow"


@pytest.mark.parametrize(("size", "scheme"), LOOKS)
def test_several_channels_can_be_picked_and_shared(new_page, stack: Stack, size: str, scheme: str) -> None:  # noqa: F811
    on = {channel: {post_to(stack, channel, {"n": i, "on": channel}) for i in range(2)} for channel in "abc"}
    wait_until(lambda: len(stack.listed()) == 6, what="history persisted")
    page = new_page(color_scheme=scheme, **SIZES[size])
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{stack.list_url}/?channel=a&channel=b")
    page.wait_for_selector("#state[data-state=live]")
    wait_until(lambda: set(shown_ids(page)) == on["a"] | on["b"], what="a's and b's history")
    assert sorted(parse_qs(urlsplit(sockets[-1]).query)["channel"]) == ["a", "b"]
    assert page.text_content("#channels > summary").strip().startswith("a, b")
    post_to(stack, "c", {"live": "on c"})
    live = {post_to(stack, "b", {"live": "on b"}), post_to(stack, "a", {"live": "on a"})}
    wait_shown(page, live)
    assert_exactly(page, on["a"] | on["b"] | live)

    open_picker(page)
    page.check('#channels input[value="c"]')
    page.wait_for_selector("#state[data-state=live]")
    wait_until(lambda: set(shown_ids(page)) >= on["c"], what="c's history too")
    assert sorted(parse_qs(urlsplit(page.url).query)["channel"]) == ["a", "b", "c"], "the view is not in the URL"
    assert sorted(parse_qs(urlsplit(sockets[-1]).query)["channel"]) == ["a", "b", "c"]
    assert page.text_content("#send-to") == "a"  # the form posts to one channel: the first picked

    page.uncheck('#channels input[value="a"]')
    page.uncheck('#channels input[value="c"]')
    only_b = on["b"] | live
    wait_until(lambda: on["b"] <= set(shown_ids(page)) <= only_b, what="b's messages alone")
    page.wait_for_selector("#state[data-state=live]")
    assert parse_qs(urlsplit(page.url).query)["channel"] == ["b"]
    assert parse_qs(urlsplit(sockets[-1]).query)["channel"] == ["b"]

    page.check('#channels input[value=""]')  # all channels
    page.wait_for_selector("#state[data-state=live]")
    wait_until(lambda: len(shown_ids(page)) == 9, what="every channel's messages again")
    assert "channel" not in parse_qs(urlsplit(page.url).query)
    assert not page.is_checked('#channels input[value="b"]')
