"""The ingestion API against a real Redis server."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import time
import uuid
from collections.abc import Callable

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import free_port, redis_busy, take_tasks

JSON = {"Content-Type": "application/json"}


def queued_records(r: redis.Redis) -> list[list[dict]]:
    """Every task message the app sent, oldest first, as its records argument (taken off the queue)."""
    return take_tasks(r)


def test_post_accepts_an_object_with_id_time_and_location(client: FlaskClient, r: redis.Redis) -> None:
    response = client.post("/dummy", data='{"hello": "wörld"}'.encode(), headers=JSON)
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"id", "received_at", "channel", "offset"} and body["channel"] == "dummy"
    assert body["offset"] == 1, "the channel's first message"
    assert uuid.UUID(body["id"]).version == 7
    assert body["received_at"].endswith("Z") and len(body["received_at"]) == 27
    assert response.headers["Location"] == f"http://lists.example/messages/{body['id']}"
    [[record]] = queued_records(r)
    assert record["id"] == body["id"] and record["received_at"] == body["received_at"]
    assert record["channel"] == "dummy" and (record["offset"], record["position"]) == (1, 1)
    assert orjson.loads(record["payload"]) == {"hello": "wörld"}


def test_post_publishes_the_message_for_live_delivery(client: FlaskClient, r: redis.Redis) -> None:
    body = client.post("/dummy", json={"n": 1}).get_json()
    [(_stream_id, fields)] = r.xrange("messages:live")
    frame = {
        "id": body["id"],
        "channel": "dummy",
        "received_at": body["received_at"],
        "payload": {"n": 1},
        "offset": 1,
        "position": 1,
    }
    assert orjson.loads(fields[b"frame"]) == frame and fields[b"channel"] == b"dummy"
    assert fields[b"position"] == b"1"


def test_ids_sort_by_receipt(client: FlaskClient) -> None:
    ids = [client.post("/dummy", json={"i": i}).get_json()["id"] for i in range(20)]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{bad json", "application/json", 400, "malformed_json"),
        (b'{"a": "\xff"}', "application/json", 400, "invalid_utf8"),
        (b"[1, 2, 3]", "application/json", 400, "not_an_object"),
        (b'"just a string"', "application/json", 400, "not_an_object"),
        (b"[" * 1100 + b"]" * 1100, "application/json", 400, "too_deep"),
        (b"", "application/json", 400, "empty_body"),
        (b'{"a": 1}', "text/plain", 415, "unsupported_media_type"),
        (b'{"a": 1}', None, 415, "unsupported_media_type"),
        (b'{"a": "' + b"x" * 5000 + b'"}', "application/json", 413, "too_large"),
    ],
)
def test_bad_input_gets_a_json_error_and_queues_nothing(
    client: FlaskClient, r: redis.Redis, data: bytes, content_type: str | None, status: int, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/dummy", data=data, headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"] == code
    assert response.get_json()["message"]
    assert r.llen("persist") == 0
    assert r.xlen("messages:live") == 0


def test_wrong_method_and_unknown_path_are_json_errors(client: FlaskClient) -> None:
    assert client.get("/dummy").get_json()["error"] == "method_not_allowed"
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_idempotency_key_repeat_returns_the_same_id_and_queues_once(client: FlaskClient, r: redis.Redis) -> None:
    """A repeat is the first answer again, status included, marked as a replay (as Stripe does)."""
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/dummy", json={"a": 1}, headers=headers)
    again = client.post("/dummy", json={"a": 1}, headers=headers)
    other = client.post("/dummy", json={"a": 1}, headers={"Idempotency-Key": "order-43"})
    assert first.status_code == 202 and again.status_code == 202
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert other.get_json()["id"] != first.get_json()["id"]
    assert len(queued_records(r)) == 2
    # The scope keys had before channels existed, so a retry across the upgrade still matches.
    assert 0 < r.ttl("idempotency:anonymous:post_message:order-42") <= 86400


def test_idempotency_key_with_another_body_is_422_and_queues_nothing(client: FlaskClient, r: redis.Redis) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/dummy", json={"amount": 1}, headers=headers)
    reused = client.post("/dummy", json={"amount": 2}, headers=headers)
    assert first.status_code == 202
    assert reused.status_code == 422 and reused.get_json()["error"] == "idempotency_key_reused"
    assert "Location" not in reused.headers
    assert [record["id"] for [record] in queued_records(r)] == [first.get_json()["id"]]


def test_idempotency_keys_are_scoped_per_token(r: redis.Redis, make_ingestion_app: Callable[..., Flask]) -> None:
    """Two clients using the same key never see each other's answers: each gets its own message."""
    client = make_ingestion_app(api_tokens=("token-a", "token-b")).test_client()
    answers = {}
    for token, body in (("token-a", {"from": "a"}), ("token-b", {"from": "b"}), ("token-b", {"from": "a"})):
        headers = {"Idempotency-Key": "order-42", "Authorization": f"Bearer {token}"}
        answers.setdefault(token, []).append(client.post("/dummy", json=body, headers=headers))
    [a], [b, b_other_body] = answers["token-a"], answers["token-b"]
    assert a.status_code == 202 and b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]
    assert b_other_body.status_code == 422
    queued = {orjson.loads(record["payload"])["from"]: record["id"] for [record] in queued_records(r)}
    assert queued == {"a": a.get_json()["id"], "b": b.get_json()["id"]}
    assert not any(b"token-" in key for key in r.keys("*")), "tokens are never stored, only their digest"


def test_bad_idempotency_key_is_rejected(client: FlaskClient, r: redis.Redis) -> None:
    response = client.post("/dummy", json={"a": 1}, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400 and response.get_json()["error"] == "bad_idempotency_key"
    assert r.llen("persist") == 0


def test_batch_queues_all_messages_in_order_in_one_task(client: FlaskClient, r: redis.Redis) -> None:
    response = client.post("/dummy/batch", json=[{"i": 0}, {"i": 1}, {"i": 2}])
    assert response.status_code == 202
    ids = response.get_json()["ids"]
    assert len(ids) == 3 and ids == sorted(ids)
    [task] = queued_records(r)
    assert [rec["id"] for rec in task] == ids
    assert [orjson.loads(rec["payload"]) for rec in task] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert r.xlen("messages:live") == 3


@pytest.mark.parametrize(
    ("batch", "code"),
    [([{"i": 0}, 1, {"i": 2}], "not_an_object"), ([], "bad_batch_size"), ([{}] * 1001, "bad_batch_size")],
)
def test_bad_batch_is_rejected_whole(client: FlaskClient, r: redis.Redis, batch: list, code: str) -> None:
    response = client.post("/dummy/batch", json=batch)
    assert response.status_code == 400 and response.get_json()["error"] == code
    assert r.llen("persist") == 0


def test_full_batch_of_1000_is_accepted(client: FlaskClient, r: redis.Redis) -> None:
    response = client.post("/dummy/batch", json=[{"i": i} for i in range(1000)])
    assert response.status_code == 202 and len(response.get_json()["ids"]) == 1000
    queued = [record["id"] for task in queued_records(r) for record in task]
    assert queued == response.get_json()["ids"], "every message queued once, in order (over several task messages)"


def test_healthz_is_ok_with_redis(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_redis_down_means_503_with_retry_after_quickly(make_ingestion_app: Callable[..., Flask]) -> None:
    app = make_ingestion_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = app.test_client()
    started = time.monotonic()
    response = client.post("/dummy", json={"a": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "queue_unavailable"
    assert elapsed < 1.0
    assert client.get("/healthz").status_code == 503


def test_a_write_redis_never_confirms_is_503_outcome_unknown_not_nothing_queued(
    make_ingestion_app: Callable[..., Flask], redis_url: str
) -> None:
    """Redis busy past the API's patience: the answer must not claim that nothing was queued."""
    app = make_ingestion_app(redis_timeout_seconds=0.2)
    app.extensions["broker"].busy_seconds = 0.5  # instead of 30 s, to keep the test short
    client = app.test_client()
    # Busy past the write's read timeout (0.2 s) and then the probe's (the app's 1 s), which ends past 0.5 s.
    with redis_busy(redis_url, 3.0):
        response = client.post("/dummy", json={"a": 1})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "outcome_unknown", response.get_json()


def test_cors_preflight_allows_post(client: FlaskClient) -> None:
    response = client.options(
        "/dummy", headers={"Origin": "null", "Access-Control-Request-Method": "POST",
                           "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "null")
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_concurrent_requests_share_queue_writes_and_each_gets_its_own_answer(app, r: redis.Redis) -> None:
    """Group commit: many threads posting at once produce fewer task messages than requests, nothing lost."""

    def post(i: int) -> str:
        response = app.test_client().post("/dummy", json={"i": i})
        assert response.status_code == 202
        return response.get_json()["id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(post, range(400)))
    tasks = queued_records(r)
    stored = [record["id"] for task in tasks for record in task]
    assert sorted(stored) == sorted(ids) and len(set(ids)) == 400
    assert len(tasks) < 400, "concurrent requests were not coalesced"
    assert r.xlen("messages:live") == 400


def test_without_group_commit_each_request_is_its_own_task(
    r: redis.Redis, make_ingestion_app: Callable[..., Flask]
) -> None:
    client = make_ingestion_app(ingest_group_commit=0).test_client()
    for i in range(3):
        client.post("/dummy", json={"i": i})
    assert [len(task) for task in queued_records(r)] == [1, 1, 1]


def test_a_channel_route_queues_and_publishes_the_message_in_its_channel(client: FlaskClient, r: redis.Redis) -> None:
    one = client.post("/channels/orders.eu/messages", json={"n": 1})
    many = client.post("/channels/b:2/messages/batch", json=[{"n": 2}, {"n": 3}])
    assert one.status_code == 202 and many.status_code == 202
    assert one.get_json()["channel"] == "orders.eu" and many.get_json()["channel"] == "b:2"
    assert set(many.get_json()) == {"ids", "received_at", "channel", "offsets"}
    assert one.get_json()["offset"] == 1 and many.get_json()["offsets"] == [1, 2], "offsets count per channel"
    assert one.headers["Location"] == f"http://lists.example/messages/{one.get_json()['id']}"
    records = [record for task in queued_records(r) for record in task]
    assert [(x["id"], x["channel"]) for x in records] == [
        (one.get_json()["id"], "orders.eu"),
        *((i, "b:2") for i in many.get_json()["ids"]),
    ]
    frames = [orjson.loads(fields[b"frame"]) for _, fields in r.xrange("messages:live")]
    assert [f["channel"] for f in frames] == ["orders.eu", "b:2", "b:2"]


@pytest.mark.parametrize("name", ["", "a%20b", "a%2Fb", "a/b", "x" * 65, "%C3%A9", "a%0Ab", "%00"])
@pytest.mark.parametrize("tail", ["", "/batch"])
def test_a_malformed_channel_is_400_bad_channel_and_queues_nothing(
    client: FlaskClient, r: redis.Redis, name: str, tail: str
) -> None:
    response = client.post(f"/channels/{name}/messages{tail}", json=[{}] if tail else {})
    assert response.status_code == 400 and response.get_json()["error"] == "bad_channel"
    assert r.xlen("messages:live") == 0 and take_tasks(r) == []


def test_the_longest_channel_name_and_every_allowed_character_are_accepted(client: FlaskClient) -> None:
    for name in ("x" * 64, "AZaz09_.:-"):
        response = client.post(f"/channels/{name}/messages", json={})
        assert response.status_code == 202 and response.get_json()["channel"] == name


def test_idempotency_keys_are_per_channel_and_dummy_is_its_channel(client: FlaskClient, r: redis.Redis) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = client.post("/channels/a/messages", json={"x": 1}, headers=key)
    other_channel = client.post("/channels/b/messages", json={"x": 1}, headers=key)
    assert first.status_code == 202 and other_channel.status_code == 202
    assert other_channel.get_json()["channel"] == "b" and other_channel.get_json()["id"] != first.get_json()["id"]
    via_dummy = client.post("/dummy", json={"x": 1}, headers=key)
    via_channel = client.post("/channels/dummy/messages", json={"x": 1}, headers=key)
    assert via_dummy.status_code == 202 and via_channel.status_code == 202
    assert via_channel.headers["Idempotent-Replayed"] == "true"
    assert via_channel.get_json() == via_dummy.get_json()
    assert len(queued_records(r)) == 3
    assert r.exists("idempotency:anonymous:post_message:a:k-1", "idempotency:anonymous:post_message:b:k-1") == 2


def test_the_rate_limit_is_one_budget_over_every_channel(make_ingestion_app: Callable[..., Flask]) -> None:
    client = make_ingestion_app(rate_limit="3/minute").test_client()
    assert client.post("/channels/a/messages", json={}).status_code == 202
    assert client.post("/channels/b/messages/batch", json=[{}]).status_code == 202
    assert client.post("/dummy", json={}).status_code == 202
    limited = client.post("/channels/c/messages", json={})
    assert limited.status_code == 429 and limited.get_json()["error"] == "too_many_requests"


def test_tokens_guard_the_channel_routes(make_ingestion_app: Callable[..., Flask]) -> None:
    client = make_ingestion_app(api_tokens=("s3cret",)).test_client()
    assert client.post("/channels/a/messages", json={}).status_code == 401
    assert client.post("/channels/a/messages/batch", json=[{}]).status_code == 401
    ok = client.post("/channels/a/messages", json={}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202


def test_a_replayed_batch_is_the_first_202_without_a_location(client: FlaskClient, r: redis.Redis) -> None:
    key = {"Idempotency-Key": "batch-7"}
    first = client.post("/channels/c/messages/batch", json=[{"n": 1}, {"n": 2}], headers=key)
    again = client.post("/channels/c/messages/batch", json=[{"n": 1}, {"n": 2}], headers=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Location" not in first.headers and "Location" not in again.headers
    assert len(queued_records(r)) == 1


def test_a_key_kept_by_the_previous_release_replays_as_202(client: FlaskClient, r: redis.Redis) -> None:
    """Keys hold the first body alone, in every release: one written before replays were 202 replays as 202."""
    body = {
        "id": "019ace2e-7b1a-7c3e-9f10-2b4c6d8e0a12",
        "received_at": "2026-11-29T07:40:21.123456Z",
        "channel": "dummy",
    }
    fingerprint = hashlib.sha256(b'{"a": 1}').hexdigest()
    r.set("idempotency:anonymous:post_message:old-1", fingerprint + ":" + orjson.dumps(body).decode(), ex=60)
    again = client.post(
        "/dummy", data=b'{"a": 1}', content_type="application/json", headers={"Idempotency-Key": "old-1"}
    )
    assert again.status_code == 202 and again.get_json() == body
    assert again.headers["Location"] == f"http://lists.example/messages/{body['id']}"
    assert again.headers["Idempotent-Replayed"] == "true" and queued_records(r) == []


# The IETF fields as Structured Fields (RFC 9651): one string item naming the policy, with integer parameters.
RATE_LIMIT_POLICY = re.compile(r'^"publish";q=(\d+);w=(\d+)$')
RATE_LIMIT = re.compile(r'^"publish";r=(\d+);t=(\d+)$')


def test_answers_carry_the_ietf_rate_limit_fields_and_the_old_ones(make_ingestion_app: Callable[..., Flask]) -> None:
    """draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` is the budget, `RateLimit` what is left of it."""
    client = make_ingestion_app(rate_limit="3/minute").test_client()
    accepted = client.post("/dummy/batch", json=[{}, {}])
    assert accepted.status_code == 202
    assert RATE_LIMIT_POLICY.match(accepted.headers["RateLimit-Policy"]).groups() == ("3", "60")
    remaining, reset = RATE_LIMIT.match(accepted.headers["RateLimit"]).groups()
    assert remaining == "1" and 0 < int(reset) <= 60
    assert accepted.headers["X-RateLimit-Limit"] == "3" and accepted.headers["X-RateLimit-Remaining"] == "1"
    assert int(accepted.headers["X-RateLimit-Reset"]) > time.time()
    refused = client.post("/dummy/batch", json=[{}, {}])
    assert refused.status_code == 429 and refused.get_json()["error"] == "too_many_requests"
    assert RATE_LIMIT.match(refused.headers["RateLimit"]).group(1) == "1"
    assert int(refused.headers["Retry-After"]) >= 1
    exposed = client.post("/dummy", json={}, headers={"Origin": "null"}).headers
    assert {"RateLimit", "RateLimit-Policy", "Idempotent-Replayed"} <= {
        name.strip() for name in exposed.get("Access-Control-Expose-Headers", "").split(",")
    }


def test_a_batch_larger_than_the_whole_budget_is_429_with_no_retry_after(
    make_ingestion_app: Callable[..., Flask], r: redis.Redis
) -> None:
    """Nothing is too large: the batch can never fit the per-period budget, and no wait would change that."""
    client = make_ingestion_app(rate_limit="3/minute").test_client()
    refused = client.post("/channels/c/messages/batch", json=[{}] * 4)
    assert refused.status_code == 429 and refused.get_json()["error"] == "batch_over_rate_limit"
    assert "never" in refused.get_json()["message"] and "Retry-After" not in refused.headers
    assert RATE_LIMIT_POLICY.match(refused.headers["RateLimit-Policy"]).groups() == ("3", "60")
    assert RATE_LIMIT.match(refused.headers["RateLimit"]).group(1) == "3", "it cost nothing"
    assert queued_records(r) == []
