"""Signed tokens on both HTTP APIs: who may publish to and read which channel, against real Redis and databases.

Every endpoint of both APIs meets the same tokens (none, badly signed,
``alg: none``, expired, for another channel, a prefix, the right
capability), signed HS256 and RS256; ES256, audience and issuer, algorithm
confusion, static tokens beside signed ones, the filtered ``GET /channels``,
the access line and the per-``sub`` rate limit have tests of their own, and
one test runs both APIs as real gunicorn processes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient

from relay.records import make_record
from tests.helpers import free_port, gunicorn, in_process_ingestion_app, python_env, wait_http_ok
from tests.listing import accepted

SECRET = "signed-tokens-test-secret-of-32-bytes!"
CHANNEL = "orders.42"
PROBLEMS = ("none", "bad_signature", "alg_none", "expired", "malformed")
UNKNOWN_ID = "019ace2e-0000-7000-8000-000000000000"


def _private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Signer:
    """How one kind of deployment signs tokens, and the settings that accept them."""

    algorithm: str
    key: Any  # what signs
    wrong_key: Any  # a key of the same kind that the server does not accept
    settings: dict[str, str]

    def mint(self, channels: dict[str, list[str]], ttl: float = 300, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "user-42", "iat": now, "exp": now + int(ttl), "channels": channels, **claims}
        return jwt.encode(body, self.key if key is None else key, algorithm=self.algorithm)


HS256 = Signer("HS256", SECRET, "another-secret-another-secret-1234", {"jwt_secret": SECRET})
RS256 = Signer("RS256", RSA_KEY, OTHER_RSA_KEY, {"jwt_public_key": _public_pem(RSA_KEY)})
ES256 = Signer("ES256", EC_KEY, ec.generate_private_key(ec.SECP256R1()), {"jwt_public_key": _public_pem(EC_KEY)})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand (PyJWT refuses to HMAC with a PEM key, as an attacker would not)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def problem_token(signer: Signer, problem: str) -> str | None:
    """A token that must not authenticate, for the right channel and every capability."""
    every = {CHANNEL: ["publish", "history"], "dummy": ["publish", "history"], "*": ["history"]}
    if problem == "none":
        return None
    if problem == "bad_signature":
        return signer.mint(every, key=signer.wrong_key)
    if problem == "alg_none":
        now = int(time.time())
        return jwt.encode({"sub": "x", "exp": now + 300, "channels": every}, None, algorithm="none")
    if problem == "expired":
        return signer.mint(every, ttl=-30)
    return "not-a-jwt"


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def assert_refused(response: Any, problem: str) -> None:
    """401 with the JSON error and an RFC 6750 challenge (an error code only when a token was presented)."""
    assert response.status_code == 401, response.get_data()[:300]
    assert response.get_json()["error"] == ("token_expired" if problem == "expired" else "unauthorized")
    challenge = response.headers["WWW-Authenticate"]
    if problem == "none":
        assert challenge == 'Bearer realm="messages"'
    else:
        assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge


def assert_forbidden(response: Any, capability: str, channel: str | None) -> None:
    assert response.status_code == 403, response.get_data()[:300]
    body = response.get_json()
    assert body["error"] == "forbidden"
    assert capability in body["message"] and (channel or "*") in body["message"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


# --- the ingestion API -------------------------------------------------------------------------------------


PUBLISHING = [  # (path, channel, body)
    ("/dummy", "dummy", {"a": 1}),
    ("/dummy/batch", "dummy", [{"a": 1}, {"a": 2}]),
    (f"/channels/{CHANNEL}/messages", CHANNEL, {"a": 1}),
    (f"/channels/{CHANNEL}/messages/batch", CHANNEL, [{"a": 1}, {"a": 2}]),
]


@pytest.fixture(params=[HS256, RS256], ids=lambda s: s.algorithm)
def signer(request: pytest.FixtureRequest) -> Signer:
    return request.param


@pytest.fixture
def publisher(redis_url: str, signer: Signer) -> FlaskClient:
    return in_process_ingestion_app(redis_url, **signer.settings).test_client()


def live_count(redis_url: str) -> int:
    return redis.Redis.from_url(redis_url).xlen("messages:live")


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize(("path", "channel", "body"), PUBLISHING)
def test_publishing_without_a_valid_token_is_401_and_queues_nothing(
    publisher: FlaskClient, signer: Signer, redis_url: str, problem: str, path: str, channel: str, body: Any
) -> None:
    response = publisher.post(path, json=body, headers=auth(problem_token(signer, problem)))
    assert_refused(response, problem)
    assert live_count(redis_url) == 0


REFUSED_GRANTS = {  # a token that may not publish to ``channel``
    "another-channel": lambda channel: {"chat.1": ["publish"]},
    "a-shorter-name": lambda channel: {channel[:-1]: ["publish"]},
    "a-longer-prefix": lambda channel: {channel + ".x*": ["publish"]},
    "the-channel-but-not-publish": lambda channel: {channel: ["history", "subscribe"]},
    "every-channel-but-not-publish": lambda channel: {"*": ["history", "subscribe"]},
}


@pytest.mark.parametrize("grant", REFUSED_GRANTS.values(), ids=REFUSED_GRANTS.keys())
@pytest.mark.parametrize(("path", "channel", "body"), PUBLISHING)
def test_publishing_without_the_capability_on_the_channel_is_403_and_queues_nothing(
    publisher: FlaskClient, signer: Signer, redis_url: str, grant: Callable, path: str, channel: str, body: Any
) -> None:
    """A batch is all or nothing: one channel per request, so a refused batch queues none of its messages."""
    response = publisher.post(path, json=body, headers=auth(signer.mint(grant(channel))))
    assert_forbidden(response, "publish", channel)
    assert live_count(redis_url) == 0


@pytest.mark.parametrize("pattern", ["exact", "prefix", "every"])
@pytest.mark.parametrize(("path", "channel", "body"), PUBLISHING)
def test_publishing_with_the_capability_is_accepted(
    publisher: FlaskClient, signer: Signer, redis_url: str, pattern: str, path: str, channel: str, body: Any
) -> None:
    granted = {"exact": channel, "prefix": channel[:3] + "*", "every": "*"}[pattern]
    response = publisher.post(path, json=body, headers=auth(signer.mint({granted: ["publish"], "x": ["history"]})))
    assert response.status_code == 202, response.get_data()[:300]
    assert response.get_json()["channel"] == channel
    assert live_count(redis_url) == (2 if path.endswith("batch") else 1)


def test_a_bad_channel_name_is_400_for_a_valid_token_and_401_without(publisher: FlaskClient, signer: Signer) -> None:
    """Authentication comes first: a caller without a valid token learns nothing about the request."""
    assert publisher.post("/channels/a%20b/messages", json={}).status_code == 401
    token = signer.mint({"*": ["publish"]})
    response = publisher.post("/channels/a%20b/messages", json={}, headers=auth(token))
    assert response.status_code == 400 and response.get_json()["error"] == "bad_channel"


# --- the list API ------------------------------------------------------------------------------------------


@pytest.fixture
def reader(make_list_app: Callable[..., Flask], signer: Signer) -> Iterator[tuple[FlaskClient, dict[str, str]]]:
    """A list API accepting ``signer``'s tokens, with a message stored on ``CHANNEL`` and one on ``chat.1``."""
    app = make_list_app(**signer.settings)
    records = [
        make_record({"n": i}, dt.datetime(2026, 11, 29, 8, 0, 0, i), channel=c)
        for i, c in enumerate((CHANNEL, "chat.1"))
    ]
    accepted.store(app, records)
    yield app.test_client(), {r["channel"]: r["id"] for r in records}


def reading_paths(ids: dict[str, str]) -> list[str]:
    return ["/messages", f"/channels/{CHANNEL}/messages", f"/messages/{ids[CHANNEL]}", "/channels"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_reading_without_a_valid_token_is_401_on_every_endpoint(reader: tuple, signer: Signer, problem: str) -> None:
    client, ids = reader
    for path in reading_paths(ids):
        assert_refused(client.get(path, headers=auth(problem_token(signer, problem))), problem)
    for path in ("/healthz", "/", "/openapi.json"):
        assert client.get(path, headers=auth(problem_token(signer, problem))).status_code == 200, path


def test_reading_another_channel_is_403_and_its_message_404_as_an_unknown_id(reader: tuple, signer: Signer) -> None:
    """A token for ``chat.*`` only: existence of an ``orders.42`` message does not leak."""
    client, ids = reader
    headers = auth(signer.mint({"chat.*": ["history", "publish"], CHANNEL: ["publish", "subscribe"]}))
    assert_forbidden(client.get(f"/channels/{CHANNEL}/messages", headers=headers), "history", CHANNEL)
    assert_forbidden(client.get("/messages", headers=headers), "history", None)
    hidden = client.get(f"/messages/{ids[CHANNEL]}", headers=headers)
    unknown = client.get(f"/messages/{UNKNOWN_ID}", headers=headers)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.get_json() == {
        "error": "not_found",
        "message": unknown.get_json()["message"].replace(UNKNOWN_ID, ids[CHANNEL]),
    }
    assert client.get(f"/messages/{ids['chat.1']}", headers=headers).status_code == 200
    listed = client.get("/channels", headers=headers).get_json()["data"]
    assert [c["name"] for c in listed] == ["chat.1"]


@pytest.mark.parametrize("pattern", ["exact", "prefix"])
def test_reading_a_channel_with_history_on_it(reader: tuple, signer: Signer, pattern: str) -> None:
    client, ids = reader
    headers = auth(signer.mint({CHANNEL if pattern == "exact" else "orders.*": ["history"]}))
    page = client.get(f"/channels/{CHANNEL}/messages", headers=headers)
    assert page.status_code == 200 and [m["id"] for m in page.get_json()["data"]] == [ids[CHANNEL]]
    assert client.get(f"/messages/{ids[CHANNEL]}", headers=headers).get_json()["channel"] == CHANNEL
    assert [c["name"] for c in client.get("/channels", headers=headers).get_json()["data"]] == [CHANNEL]
    assert_forbidden(client.get("/messages", headers=headers), "history", None)


def test_reading_every_channel_needs_the_star_pattern(reader: tuple, signer: Signer) -> None:
    client, ids = reader
    headers = auth(signer.mint({"*": ["history"]}))
    assert len(client.get("/messages", headers=headers).get_json()["data"]) == 2
    assert len(client.get("/channels", headers=headers).get_json()["data"]) == 2
    publish_only = auth(signer.mint({"*": ["publish", "subscribe"]}))
    assert_forbidden(client.get("/messages", headers=publish_only), "history", None)
    assert client.get(f"/messages/{ids[CHANNEL]}", headers=publish_only).status_code == 404
    assert client.get("/channels", headers=publish_only).get_json()["data"] == []


# --- GET /channels, filtered in SQL --------------------------------------------------------------------------

NAMES = ["A_B.2", "ORDERS.2", "a_b", "a_b.1", "aXb.1", "aab.1", "exact_1", "exactX1", "order", "orders.1", "orders_x"]


def test_channels_lists_only_readable_channels_by_exact_name_and_prefix(make_list_app: Callable[..., Flask]) -> None:
    """``_`` is a channel character, not a wildcard; case counts (SQLite's LIKE ignores it); pages stay keyset."""
    app = make_list_app(jwt_secret=SECRET)
    accepted.store(app, [make_record({}, dt.datetime(2026, 1, 1), channel=name) for name in NAMES])
    client = app.test_client()
    headers = auth(
        HS256.mint({"a_b*": ["history"], "orders.*": ["history"], "exact_1": ["history"], "aab*": ["publish"]})
    )
    expected = ["a_b", "a_b.1", "exact_1", "orders.1"]
    assert [c["name"] for c in client.get("/channels", headers=headers).get_json()["data"]] == expected
    walked, cursor = [], None
    for _ in range(10):
        page = client.get(
            "/channels", headers=headers, query_string={"limit": 1, **({"cursor": cursor} if cursor else {})}
        ).get_json()
        walked += [c["name"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert walked == expected
    nothing = auth(HS256.mint({"zzz": ["history"]}))
    assert client.get("/channels", headers=nothing).get_json() == {"data": [], "has_more": False, "next_cursor": None}


# --- keys, algorithms, claims --------------------------------------------------------------------------------


def test_es256_tokens_are_accepted_with_an_ec_public_key(redis_url: str, make_list_app: Callable[..., Flask]) -> None:
    publisher = in_process_ingestion_app(redis_url, **ES256.settings).test_client()
    reader = make_list_app(**ES256.settings).test_client()
    token = ES256.mint({CHANNEL: ["publish", "history"]})
    assert publisher.post(f"/channels/{CHANNEL}/messages", json={}, headers=auth(token)).status_code == 202
    assert reader.get(f"/channels/{CHANNEL}/messages", headers=auth(token)).status_code == 200
    assert_forbidden(publisher.post("/dummy", json={}, headers=auth(token)), "publish", "dummy")
    assert_refused(reader.get("/channels", headers=auth(ES256.mint({"*": ["history"]}, key=ES256.wrong_key))), "bad")


def test_algorithm_confusion_is_refused(redis_url: str, make_list_app: Callable[..., Flask]) -> None:
    """An HS256 token whose secret is the server's own public key (PEM) never authenticates."""
    pem = RS256.settings["jwt_public_key"]
    now = int(time.time())
    forged = forged_hs256({"sub": "mallory", "exp": now + 300, "channels": {"*": ["publish", "history"]}}, pem.encode())
    for settings in (RS256.settings, {**RS256.settings, "jwt_secret": SECRET}):
        publisher = in_process_ingestion_app(redis_url, **settings).test_client()
        reader = make_list_app(**settings).test_client()
        assert_refused(publisher.post("/dummy", json={}, headers=auth(forged)), "forged")
        assert_refused(reader.get("/messages", headers=auth(forged)), "forged")
    assert live_count(redis_url) == 0
    honest = forged_hs256({"sub": "alice", "exp": now + 300, "channels": {"*": ["history"]}}, SECRET.encode())
    assert reader.get("/messages", headers=auth(honest)).status_code == 200, "the forging helper signs correctly"


def test_audience_issuer_and_not_before_are_checked_when_set(make_list_app: Callable[..., Flask]) -> None:
    client = make_list_app(jwt_secret=SECRET, jwt_audience="relay", jwt_issuer="https://issuer.example").test_client()
    channels = {"*": ["history"]}
    right = {"aud": "relay", "iss": "https://issuer.example"}
    assert client.get("/messages", headers=auth(HS256.mint(channels, **right))).status_code == 200
    for claims in ({}, {**right, "aud": "other"}, {**right, "iss": "https://evil.example"}, {"aud": "relay"}):
        assert_refused(client.get("/messages", headers=auth(HS256.mint(channels, **claims))), "claims")
    later = HS256.mint(channels, nbf=int(time.time()) + 600, **right)
    assert_refused(client.get("/messages", headers=auth(later)), "not yet valid")


def test_static_tokens_keep_full_access_beside_signed_ones(redis_url: str, make_list_app: Callable[..., Flask]) -> None:
    settings = {"api_tokens": ("service-token",), "jwt_secret": SECRET}
    publisher = in_process_ingestion_app(redis_url, **settings).test_client()
    reader = make_list_app(**settings).test_client()
    static = auth("service-token")
    for path, _, body in PUBLISHING:
        assert publisher.post(path, json=body, headers=static).status_code == 202, path
    assert reader.get("/messages", headers=static).status_code == 200
    assert reader.get(f"/channels/{CHANNEL}/messages", headers=static).status_code == 200
    assert len(reader.get("/channels", headers=static).get_json()["data"]) == 0  # nothing persisted here
    signed = auth(HS256.mint({"chat.*": ["publish"]}))
    assert publisher.post("/channels/chat.1/messages", json={}, headers=signed).status_code == 202
    assert_forbidden(publisher.post("/dummy", json={}, headers=signed), "publish", "dummy")
    assert_refused(reader.get("/messages", headers=auth("service-tokeN")), "wrong static token")


# --- operating it: the access line, rate limits, failed checks ---------------------------------------------------


def test_access_line_carries_the_subject_never_the_token(
    redis_url: str,
    make_list_app: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = in_process_ingestion_app(redis_url, jwt_secret=SECRET).test_client()
    reader = make_list_app(jwt_secret=SECRET).test_client()
    token = HS256.mint({CHANNEL: ["publish"]}, sub="alice@example")
    # The migrations' logging.config.fileConfig disables loggers that existed before it ran, this one included.
    monkeypatch.setattr(logging.getLogger("access"), "disabled", False)
    with caplog.at_level(logging.INFO, logger="access"):
        assert publisher.post(f"/channels/{CHANNEL}/messages", json={}, headers=auth(token)).status_code == 202
        assert reader.get("/messages", headers=auth(token)).status_code == 403
        assert reader.get("/healthz").status_code == 200
    lines = [r for r in caplog.records if r.name == "access"]
    assert [getattr(r, "sub", None) for r in lines] == ["alice@example", "alice@example", None]
    assert all(token not in json.dumps(r.__dict__, default=str) for r in caplog.records)


def test_rate_limit_counts_per_subject(redis_url: str) -> None:
    """Two users behind one address each get their budget; two tokens of one user share theirs."""
    client = in_process_ingestion_app(redis_url, jwt_secret=SECRET, rate_limit="2/minute").test_client()
    alice = [auth(HS256.mint({"*": ["publish"]}, sub="alice")), auth(HS256.mint({"dummy": ["publish"]}, sub="alice"))]
    bob = auth(HS256.mint({"*": ["publish"]}, sub="bob"))
    assert [client.post("/dummy", json={}, headers=h).status_code for h in (*alice, alice[0])] == [202, 202, 429]
    assert [client.post("/dummy", json={}, headers=bob).status_code for _ in range(3)] == [202, 202, 429]


def test_idempotency_keys_are_scoped_per_subject(redis_url: str) -> None:
    client = in_process_ingestion_app(redis_url, jwt_secret=SECRET).test_client()
    key = {"Idempotency-Key": "order-1"}
    for sub, replayed in (("alice", None), ("alice", "true"), ("bob", None)):
        headers = {**key, **auth(HS256.mint({"dummy": ["publish"]}, sub=sub))}
        answer = client.post("/dummy", json={"a": 1}, headers=headers)
        assert (answer.status_code, answer.headers.get("Idempotent-Replayed")) == (202, replayed), sub


def test_forbidden_requests_are_not_failed_token_checks(redis_url: str, make_list_app: Callable[..., Flask]) -> None:
    reader = make_list_app(jwt_secret=SECRET, auth_failure_limit="2/minute").test_client()
    limited = auth(HS256.mint({"chat.*": ["history"]}))
    assert [reader.get("/messages", headers=limited).status_code for _ in range(4)] == [403] * 4
    expired = auth(HS256.mint({"*": ["history"]}, ttl=-30))
    assert [reader.get("/messages", headers=expired).status_code for _ in range(3)] == [401, 401, 429]


# --- real processes ----------------------------------------------------------------------------------------------


def test_both_apis_under_gunicorn_enforce_rs256_tokens(redis_url: str, sqlite_url: str, log_dir: Path) -> None:
    """The public key reaches each gunicorn worker through the environment, as in a deployment."""
    from tests.helpers import clear_database

    clear_database(sqlite_url)
    env = python_env(
        {
            "REDIS_URL": redis_url,
            "SQLALCHEMY_DATABASE_URI": sqlite_url,
            "SECRET_KEY": "gunicorn-secret",
            "JWT_PUBLIC_KEY": RS256.settings["jwt_public_key"],
        }
    )
    ingest_port, list_port = free_port(), free_port()
    services = [
        gunicorn("ingestion_api", "ingestion_api", ingest_port, env, log_dir).start(),
        gunicorn("list_api", "list_api", list_port, env, log_dir).start(),
    ]
    try:
        ingest, listing = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{list_port}"
        wait_http_ok(f"{ingest}/healthz")
        wait_http_ok(f"{listing}/healthz")
        token = RS256.mint({"orders.*": ["publish", "history"]}, sub="gunicorn-user")
        sent = requests.post(f"{ingest}/channels/{CHANNEL}/messages", json={}, headers=auth(token), timeout=5)
        assert sent.status_code == 202
        refused = requests.post(f"{ingest}/dummy", json={}, headers=auth(token), timeout=5)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        missing = requests.get(f"{listing}/channels/{CHANNEL}/messages", timeout=5)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="messages"'
        assert requests.get(f"{listing}/channels/{CHANNEL}/messages", headers=auth(token), timeout=5).status_code == 200
        assert requests.get(f"{listing}/messages", headers=auth(token), timeout=5).status_code == 403
        for service in services:
            lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
            assert any(line.get("sub") == "gunicorn-user" for line in lines if line["logger"] == "access"), service.name
            assert token not in service.log()
    finally:
        for service in services:
            service.stop()
