"""Listing in position order below the watermark, ``after``, and reading a message before it is stored.

Messages are accepted through a real producer (the accept script gives
their offsets and positions) and stored with ``storage.save_messages``, no
worker running, so each test decides what is stored, and in which order,
and what is still pending; on real Redis and SQLite, then MariaDB.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import jwt
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from relay.broker.dead_letters import DeadLetters
from relay.listing.cursor import MAX_POSITION
from relay.records import make_record
from tests.helpers import free_port
from tests.listing import accepted
from tests.tcp_proxy import TcpProxy

STAMP = dt.datetime(2026, 12, 1, 9, 0, 0)
UNKNOWN_ID = "019ace2e-0000-7000-8000-000000000000"
JWT_SECRET = "positions-test-jwt-secret-of-32-bytes"


def messages(*channels: str) -> list[dict]:
    """One record per channel given, in that order."""
    return [make_record({"n": n}, STAMP + dt.timedelta(microseconds=n), channel=c) for n, c in enumerate(channels)]


def accept_one_by_one(app: Flask, records: list[dict]) -> None:
    """Accept each record in a write of its own, as sequential requests are."""
    for record in records:
        accepted.accept(app, [record])


def listed(client: FlaskClient, path: str, **query: object) -> dict:
    response = client.get(path, query_string=query)
    assert response.status_code == 200, response.get_data()[:300]
    return response.get_json()


def positions(page: dict) -> list[int]:
    return [m["position"] for m in page["data"]]


def follow(client: FlaskClient, path: str, cursor: str | None) -> tuple[list[dict], str | None]:
    """Every message a follower gets from ``cursor`` on, page by page, and where it stops."""
    seen = []
    while True:
        page = listed(client, path, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return seen, cursor


@pytest.mark.parametrize("path", ["/messages", "/channels/a/messages"])
def test_a_listing_stops_below_a_message_accepted_but_not_yet_stored(
    app: Flask, client: FlaskClient, path: str
) -> None:
    """Positions 1 and 3 stored (3 first), 2 still pending: only 1 is listed, and the follower later gets 2, 3 once."""
    records = messages("a", "a", "a")
    accept_one_by_one(app, records)
    one, two, three = records
    accepted.settle(app, [three])
    accepted.settle(app, [one])
    page = listed(client, path)
    assert positions(page) == [1] and page["has_more"] is False
    assert [m["offset"] for m in page["data"]] == [1]
    assert positions(listed(client, path, order="desc")) == [1], "newest first starts below the watermark too"
    cursor = page["next_cursor"]
    assert listed(client, path, cursor=cursor) == {"data": [], "has_more": False, "next_cursor": cursor}
    accepted.settle(app, [two])
    app.extensions["pending"].done([r["id"] for r in records])
    rest, end = follow(client, path, cursor)
    assert [m["id"] for m in rest] == [two["id"], three["id"]], "2 and 3, nothing twice"
    assert [(m["offset"], m["position"]) for m in rest] == [(2, 2), (3, 3)]
    assert listed(client, path, cursor=end)["data"] == []


def test_the_all_channels_listing_restricted_to_a_channel_is_that_channels_listing(
    app: Flask, client: FlaskClient
) -> None:
    records = messages("a", "b", "a", "b", "b", "a")
    accept_one_by_one(app, records)
    accepted.settle(app, records)
    everything = listed(client, "/messages")["data"]
    assert positions({"data": everything}) == [1, 2, 3, 4, 5, 6]
    channel_a = listed(client, "/channels/a/messages")["data"]
    assert channel_a == [m for m in everything if m["channel"] == "a"]
    assert [m["offset"] for m in channel_a] == [1, 2, 3]


def test_a_dead_lettered_position_is_passed_and_its_replay_is_seen_by_the_follower(
    app: Flask, client: FlaskClient, redis_url: str
) -> None:
    records = messages("a", "a", "a")
    accept_one_by_one(app, records)
    one, two, three = records
    accepted.settle(app, [one, three])
    dead_letters = DeadLetters(redis.Redis.from_url(redis_url), "dead_letters", accept=accepted.producer(app).write)
    assert dead_letters.add(two, "the database keeps rejecting it")
    app.extensions["pending"].done([two["id"]])  # settled without being stored
    seen, cursor = follow(client, "/messages", None)
    assert [m["id"] for m in seen] == [one["id"], three["id"]], "the dead letter's position is passed"
    assert dead_letters.replay() == 1 and dead_letters.count() == 0
    replayed = app.extensions["pending"].record(two["id"])
    assert (replayed["offset"], replayed["position"]) == (4, 4), "a new place, above every cursor"
    assert listed(client, "/messages", cursor=cursor)["data"] == [], "pending: not listed yet"
    accepted.settle(app, [replayed])
    later, _ = follow(client, "/messages", cursor)
    assert [(m["id"], m["offset"], m["position"]) for m in later] == [(two["id"], 4, 4)]
    assert [m["id"] for m in listed(client, "/channels/a/messages")["data"]] == [one["id"], three["id"], two["id"]]


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/messages", {"after": 2}, [3, 4, 5]),
        ("/messages", {"after": 0}, [1, 2, 3, 4, 5]),
        ("/messages", {"after": 4, "order": "desc"}, [3, 2, 1]),
        ("/messages", {"after": MAX_POSITION}, []),
        ("/channels/a/messages", {"after": 1}, [3, 5]),
        ("/channels/a/messages", {"after": 2}, [3, 5]),
        ("/channels/a/messages", {"after": 5, "order": "desc"}, [3, 1]),
        ("/channels/b/messages", {"after": 4}, []),
    ],
)
def test_after_starts_right_after_a_position(
    app: Flask, client: FlaskClient, path: str, query: dict, expected: list[int]
) -> None:
    records = messages("a", "b", "a", "b", "a")
    accept_one_by_one(app, records)
    accepted.settle(app, records)
    page = listed(client, path, **query)
    assert positions(page) == expected and page["has_more"] is False


def test_after_then_the_cursor_pages_on(app: Flask, client: FlaskClient) -> None:
    accepted.store(app, messages(*"abababa"))
    first = listed(client, "/messages", after=2, limit=2)
    assert positions(first) == [3, 4] and first["has_more"] is True
    assert "after=" not in client.get("/messages?after=2&limit=2").headers["Link"], "the cursor takes over"
    rest, _ = follow(client, "/messages", first["next_cursor"])
    assert positions({"data": rest}) == [5, 6, 7]
    on_a = listed(client, "/channels/a/messages", after=3, limit=1)
    assert positions(on_a) == [5] and positions(listed(client, "/channels/a/messages", cursor=on_a["next_cursor"])) == [
        7
    ]
    idle = listed(client, "/messages", after=7)
    assert idle["data"] == [] and positions(listed(client, "/messages", cursor=idle["next_cursor"])) == []


@pytest.mark.parametrize("path", ["/messages", "/channels/a/messages"])
@pytest.mark.parametrize("after", ["abc", "-1", "1.5", "", " 1", "²", str(MAX_POSITION + 1)])
def test_a_malformed_after_is_400_bad_after(client: FlaskClient, path: str, after: str) -> None:
    response = client.get(path, query_string={"after": after})
    assert response.status_code == 400 and response.get_json()["error"] == "bad_after"


@pytest.mark.parametrize("path", ["/messages", "/channels/a/messages"])
def test_after_with_a_cursor_is_400_bad_after(app: Flask, client: FlaskClient, path: str) -> None:
    accepted.store(app, messages("a", "a"))
    cursor = listed(client, path, limit=1)["next_cursor"]
    response = client.get(path, query_string={"cursor": cursor, "after": 1})
    assert response.status_code == 400 and response.get_json()["error"] == "bad_after"


def test_a_message_reads_from_its_202_on_pending_then_stored(app: Flask, client: FlaskClient) -> None:
    """Read your writes: ``Location`` answers 200 before the worker stores the message (``persisted_at`` null)."""
    accepted.store(app, messages("a"))
    [record] = messages("a")
    answer = {"id": record["id"], "received_at": record["received_at"], "channel": "a"}
    enqueued = accepted.producer(app).enqueue([record], answer).answer
    pending = client.get(f"/messages/{record['id']}")
    assert pending.status_code == 200 and pending.headers["Cache-Control"] == "no-store"
    assert "ETag" not in pending.headers
    body = pending.get_json()
    assert body == {
        "id": record["id"],
        "channel": "a",
        "offset": enqueued["offset"],
        "position": 2,
        "received_at": record["received_at"],
        "persisted_at": None,
        "payload": {"n": 0},
    }
    assert enqueued["offset"] == 2
    accepted.settle(app, [record])
    stored = client.get(f"/messages/{record['id']}")
    assert stored.status_code == 200 and stored.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert stored.headers["ETag"]
    assert stored.get_json() == {**body, "persisted_at": stored.get_json()["persisted_at"]}
    assert stored.get_json()["persisted_at"].endswith("Z")


def test_a_message_stored_between_the_first_two_looks_is_found_by_the_third(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker commits and clears the pending record right after the first database look missed: the
    third look must see that commit, not the first look's snapshot."""
    [record] = messages("a")
    accepted.accept(app, [record])
    pending = app.extensions["pending"]
    look_up = pending.record

    def stored_meanwhile(message_id: str) -> dict | None:
        accepted.settle(app, [record])
        return look_up(message_id)

    monkeypatch.setattr(pending, "record", stored_meanwhile)
    response = client.get(f"/messages/{record['id']}")
    assert response.status_code == 200, response.get_data()[:300]
    assert response.get_json()["persisted_at"] is not None


def test_a_pending_message_of_a_channel_the_token_may_not_read_is_404_as_an_unknown_id(
    make_list_app: Callable[..., Flask],
) -> None:
    app = make_list_app(jwt_secret=JWT_SECRET)
    client = app.test_client()
    [record] = messages("secret")
    accepted.accept(app, [record])

    def headers(channels: dict[str, list[str]]) -> dict[str, str]:
        claims = {"sub": "reader", "exp": int(time.time()) + 300, "channels": channels}
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}

    others = headers({"public": ["history"], "secret": ["publish", "subscribe"]})
    hidden = client.get(f"/messages/{record['id']}", headers=others)
    unknown = client.get(f"/messages/{UNKNOWN_ID}", headers=others)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.get_json()["message"] == unknown.get_json()["message"].replace(UNKNOWN_ID, record["id"])
    readable = client.get(f"/messages/{record['id']}", headers=headers({"secr*": ["history"]}))
    assert readable.status_code == 200 and readable.get_json()["persisted_at"] is None


def test_with_redis_gone_a_process_keeps_its_last_watermark_and_a_fresh_one_answers_503(
    make_list_app: Callable[..., Flask], redis_url: str
) -> None:
    """A watermark only rises: the last one read shows less, never a gap. With none read there is nothing to go by."""
    proxy = TcpProxy("127.0.0.1", redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]).start()
    try:
        app = make_list_app(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        client = app.test_client()
        stored = messages("a", "a", "a")
        accepted.store(app, stored)
        assert positions(listed(client, "/messages")) == [1, 2, 3]
        proxy.cut()
        writer = make_list_app()  # a worker goes on storing through Redis, which this process cannot reach
        accepted.store(writer, messages("a", "a"))
        page = listed(client, "/messages")
        assert positions(page) == [1, 2, 3] and page["has_more"] is False
        assert positions(listed(client, "/channels/a/messages", order="desc")) == [3, 2, 1]
        assert listed(client, "/messages", cursor=page["next_cursor"])["data"] == []
        assert client.get(f"/messages/{stored[0]['id']}").status_code == 200
        proxy.restore()
        assert positions(listed(client, "/messages", cursor=page["next_cursor"])) == [4, 5], "back: the rest"
    finally:
        proxy.stop()
    fresh = make_list_app(redis_url=f"redis://127.0.0.1:{free_port()}/0").test_client()
    for path in ("/messages", "/channels/a/messages", "/messages?after=1"):
        response = fresh.get(path)
        assert response.status_code == 503, path
        assert response.get_json()["error"] == "redis_unavailable" and response.headers["Retry-After"] == "1"
    assert fresh.get(f"/messages/{stored[0]['id']}").get_json()["position"] == 1, "stored: the database answers"
    unknown = fresh.get(f"/messages/{UNKNOWN_ID}")
    assert unknown.status_code == 503 and unknown.get_json()["error"] == "redis_unavailable"
    assert fresh.get("/channels").get_json()["data"][0]["messages"] == 5, "counts need no watermark"
