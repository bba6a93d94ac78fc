"""The list API on real SQLite and MariaDB databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from list_api import create_app
from relay.records import make_record
from tests.listing import accepted


def store(app: Flask, count: int, start: int = 0) -> list[str]:
    """Accept ``count`` messages on ``dummy`` through a real producer and store them; their ids."""
    return accepted.store(
        app, [make_record({"n": start + i}, dt.datetime(2026, 11, 29, 8, 0, 0, i)) for i in range(count)]
    )


def test_empty_listing(client: FlaskClient) -> None:
    response = client.get("/messages")
    assert response.status_code == 200
    assert response.get_json() == {"data": [], "has_more": False, "next_cursor": None}
    assert "Link" not in response.headers


def test_listing_pages_in_persistence_order_with_link_header(app: Flask, client: FlaskClient) -> None:
    ids = store(app, 5)
    first = client.get("/messages?limit=2")
    body = first.get_json()
    assert [m["id"] for m in body["data"]] == ids[:2]
    assert body["has_more"] is True
    assert set(body["data"][0]) == {"id", "channel", "offset", "position", "received_at", "persisted_at", "payload"}
    assert [(m["offset"], m["position"]) for m in body["data"]] == [(1, 1), (2, 2)]
    assert body["data"][0]["payload"] == {"n": 0}
    link = first.headers["Link"]
    assert link.endswith('>; rel="next"')
    query = parse_qs(urlsplit(link[1 : link.index(">")]).query)
    assert query["cursor"] == [body["next_cursor"]] and query["limit"] == ["2"]
    seen = [m["id"] for m in body["data"]]
    cursor = body["next_cursor"]
    while True:
        page = client.get(f"/messages?limit=2&cursor={cursor}").get_json()
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids
    assert cursor is not None, "the last page still carries a cursor"


def test_follower_continues_from_its_last_cursor(app: Flask, client: FlaskClient) -> None:
    store(app, 3)
    last = client.get("/messages").get_json()
    assert last["has_more"] is False and last["next_cursor"]
    idle = client.get(f"/messages?cursor={last['next_cursor']}").get_json()
    assert idle == {"data": [], "has_more": False, "next_cursor": last["next_cursor"]}
    later = store(app, 2, start=10)
    page = client.get(f"/messages?cursor={last['next_cursor']}").get_json()
    assert [m["id"] for m in page["data"]] == later


def test_desc_order_starts_at_the_newest(app: Flask, client: FlaskClient) -> None:
    ids = store(app, 5)
    page = client.get("/messages?order=desc&limit=3").get_json()
    assert [m["id"] for m in page["data"]] == ids[::-1][:3]
    rest = client.get(f"/messages?order=desc&cursor={page['next_cursor']}").get_json()
    assert [m["id"] for m in rest["data"]] == ids[::-1][3:]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "bad_limit"),
        ("limit=1001", "bad_limit"),
        ("limit=abc", "bad_limit"),
        ("limit=-1", "bad_limit"),
        ("limit=²", "bad_limit"),
        ("limit=٣", "bad_limit"),
        ("order=sideways", "bad_order"),
        ("cursor=garbage", "bad_cursor"),
        ("cursor=", "bad_cursor"),
        ("colour=blue", "unknown_parameter"),
    ],
)
def test_bad_query_is_a_400_json_error(client: FlaskClient, query: str, code: str) -> None:
    response = client.get(f"/messages?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"] == code


def test_tampered_cursor_is_rejected(app: Flask, client: FlaskClient) -> None:
    store(app, 3)
    cursor = client.get("/messages?limit=1").get_json()["next_cursor"]
    _payload, signature = cursor.split(".")
    forged = f"Mg.{signature}"  # base64 of "2" with the signature of another position
    assert forged != cursor
    assert client.get(f"/messages?cursor={forged}").get_json()["error"] == "bad_cursor"


def test_get_one_message_and_404(app: Flask, client: FlaskClient) -> None:
    [message_id] = store(app, 1)
    response = client.get(f"/messages/{message_id}")
    assert response.status_code == 200 and response.get_json()["id"] == message_id
    missing = client.get("/messages/01a22649-0717-7cb0-a31f-94907ddc217f")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    assert client.get("/messages/not-an-id").status_code == 404


def test_cors_allows_get_from_any_origin(client: FlaskClient) -> None:
    response = client.get("/messages", headers={"Origin": "null"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_healthz_checks_the_database(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_gone(tmp_path) -> None:
    app = create_app({"sqlalchemy_database_uri": f"sqlite:///{tmp_path}/missing/dir/x.db"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503 and response.get_json()["error"] == "database_unavailable"


def test_link_comes_from_the_configured_url_not_the_request_headers(make_list_app: Callable[..., Flask]) -> None:
    app = make_list_app(list_api_url="https://api.example")
    store(app, 3)
    forged = {"Host": "evil.example", "X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "evil.example"}
    link = app.test_client().get("/messages?limit=1", headers=forged).headers["Link"]
    assert link.startswith("<https://api.example/messages?") and "evil" not in link and "gopher" not in link


def test_a_signed_cursor_beyond_the_largest_position_is_a_400(app: Flask, client: FlaskClient) -> None:
    """A cursor forged with the secret cannot overflow the database driver (a 500 on SQLite before)."""
    store(app, 1)
    codec = app.extensions["cursor"]
    for position in (2**63, 2**64 + 5):
        response = client.get("/messages", query_string={"cursor": codec.encode(position)})
        assert response.status_code == 400 and response.get_json()["error"] == "bad_cursor"
    assert client.get("/messages", query_string={"cursor": codec.encode(2**63 - 1)}).status_code == 200


def store_in(app: Flask, channel: str, count: int, start: int = 0) -> list[str]:
    batch = [
        make_record({"n": start + i}, dt.datetime(2026, 11, 30, 4, 0, 0, i), channel=channel) for i in range(count)
    ]
    return accepted.store(app, batch)


def test_a_channel_listing_pages_only_that_channel_with_link_headers(app: Flask, client: FlaskClient) -> None:
    a = store_in(app, "a", 3)
    store_in(app, "b", 2)
    a += store_in(app, "a", 2, start=10)
    seen, url = [], "/channels/a/messages?limit=2"
    while url:
        response = client.get(url)
        body = response.get_json()
        assert {m["channel"] for m in body["data"]} == {"a"}
        seen += [m["id"] for m in body["data"]]
        link = response.headers.get("Link")
        assert (link is not None) == body["has_more"]
        url = urlsplit(link[1 : link.index(">")])._replace(scheme="", netloc="").geturl() if link else None
    assert seen == a
    newest = client.get("/channels/b/messages?order=desc&limit=1").get_json()
    assert newest["data"][0]["payload"] == {"n": 1} and newest["has_more"] is True
    assert client.get("/channels/nobody/messages").get_json() == {"data": [], "has_more": False, "next_cursor": None}
    assert len(client.get("/messages").get_json()["data"]) == 7


def test_channels_are_listed_by_name_with_counts_and_pages(app: Flask, client: FlaskClient) -> None:
    for name, count in (("b", 2), ("a", 1), ("c", 3)):
        store_in(app, name, count)
    first = client.get("/channels?limit=2")
    body = first.get_json()
    assert [(c["name"], c["messages"]) for c in body["data"]] == [("a", 1), ("b", 2)] and body["has_more"]
    assert body["data"][1]["last_message_at"] == "2026-11-30T04:00:00.000001Z"
    assert urlsplit(first.headers["Link"][1:]).path == "/channels" and "limit=2&cursor=" in first.headers["Link"]
    rest = client.get(f"/channels?limit=2&cursor={body['next_cursor']}").get_json()
    assert [c["name"] for c in rest["data"]] == ["c"] and rest["has_more"] is False
    message_cursor = client.get("/messages?limit=1").get_json()["next_cursor"]
    assert client.get(f"/channels?cursor={message_cursor}").get_json()["error"] == "bad_cursor"


@pytest.mark.parametrize("path", ["/channels/a/b/messages", "/channels/a%2Fb/messages", "/channels//messages"])
def test_a_malformed_channel_in_a_listing_is_400_bad_channel(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400 and response.get_json()["error"] == "bad_channel"


def test_a_stored_message_is_cacheable_forever_with_a_strong_etag(app: Flask, client: FlaskClient) -> None:
    """A stored message never changes: public, a year, immutable; its ETag is strong and stable."""
    [message_id] = store(app, 1)
    response = client.get(f"/messages/{message_id}")
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"'), "strong (no W/ prefix)"
    assert client.get(f"/messages/{message_id}").headers["ETag"] == etag


def test_if_none_match_of_the_etag_is_304_without_a_body(app: Flask, client: FlaskClient) -> None:
    [message_id, other_id] = store(app, 2)
    etag = client.get(f"/messages/{message_id}").headers["ETag"]
    fresh = client.get(f"/messages/{message_id}", headers={"If-None-Match": etag})
    assert fresh.status_code == 304 and fresh.get_data() == b""
    assert fresh.headers["ETag"] == etag and "immutable" in fresh.headers["Cache-Control"]
    changed = client.get(f"/messages/{other_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.get_json()["id"] == other_id


def test_with_tokens_a_message_is_cached_privately_and_never_304_before_the_token_check(
    make_list_app: Callable[..., Flask],
) -> None:
    """Access is per token: shared caches must not keep it, and a validator is no way around a 401."""
    app = make_list_app(api_tokens=("reader",))
    [message_id] = store(app, 1)
    client = app.test_client()
    response = client.get(f"/messages/{message_id}", headers={"Authorization": "Bearer reader"})
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert "Authorization" in response.headers["Vary"]
    unauthorized = client.get(f"/messages/{message_id}", headers={"If-None-Match": response.headers["ETag"]})
    assert unauthorized.status_code == 401 and unauthorized.headers["Cache-Control"] == "no-store"


def test_errors_of_one_message_are_never_cached(
    client: FlaskClient, make_list_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """A 404 is cacheable by default (RFC 9111), yet the message may be stored a moment later."""
    missing = client.get("/messages/01a22649-0717-7cb0-a31f-94907ddc217f")
    assert missing.status_code == 404 and missing.headers["Cache-Control"] == "no-store"
    down = make_list_app(sqlalchemy_database_uri=f"sqlite:///{tmp_path}/missing/dir/x.db").test_client()
    unavailable = down.get("/messages/01a22649-0717-7cb0-a31f-94907ddc217f")
    assert unavailable.status_code == 503 and unavailable.headers["Cache-Control"] == "no-store"
