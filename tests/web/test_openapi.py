"""The OpenAPI documents: valid, served by each app, true of real responses, in the docs.

Each row of ``INGESTION_CASES`` and ``LIST_CASES`` sends one real request (to
an app on a real Redis, or a real SQLite or MariaDB database) and checks the
response, status, headers and body, against the document the app serves
(openapi-core). A static test checks that the rows cover every status of
every documented operation, and a 405 for every wrong method on every path,
so a status cannot be documented without being seen.

Rows with ``env="tokens"`` set ``API_TOKENS``, ``env="signed"`` set
``JWT_SECRET`` (signed tokens with channel capabilities), ``env="guessing"`` that and a
low ``AUTH_FAILURE_LIMIT``, ``env="limited"`` set ``RATE_LIMIT``,
``env="down"`` point the app at a Redis port nobody listens on, or a
database that cannot be opened, ``env="redis_down"`` point the list API
(its database up) at a Redis port nobody listens on, and ``env="unseeded"``
remove the position counters no worker has seeded yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import redis
from flask import Flask
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.deserializing.media_types.util import plain_loads
from openapi_spec_validator import validate
from sqlalchemy.engine import make_url
from werkzeug.test import EnvironBuilder, TestResponse

import list_api
from relay.listing import app as listing
from relay.listing.cursor import CursorCodec
from relay.records import make_record
from relay.settings import load_settings
from tests.helpers import ROOT, SERVICES, free_port, in_process_ingestion_app
from tests.helpers import openapi_document as spec
from tests.listing import accepted

TOKEN = "openapi-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JWT_SECRET = "openapi-test-jwt-secret-of-32-bytes"


def signed(channels: dict[str, list[str]], ttl: int = 3600) -> dict[str, str]:
    """The ``Authorization`` header of a signed token (``env="signed"``) allowing ``channels``."""
    claims = {"sub": "openapi-test", "exp": int(dt.datetime.now(dt.UTC).timestamp()) + ttl, "channels": channels}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


PUBLISH_ANY = signed({"*": ["publish"]})
PUBLISH_ELSEWHERE = signed({"elsewhere": ["publish", "history"], "*": ["subscribe"]})
EXPIRED = signed({"*": ["publish", "history"]}, ttl=-60)
JSON = "application/json"
UNKNOWN_ID = "019ace2e-0000-7000-8000-000000000000"
STORED = "{stored}"  # replaced by the id of a stored message
PENDING = "{pending}"  # replaced by the id of a message accepted and not stored yet
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CURSOR = CursorCodec("test-secret").encode(1)  # one the list apps (SECRET_KEY "test-secret") issue


@dataclass(frozen=True)
class Row:
    """One request and the answer the document says it gets."""

    method: str
    path: str
    status: int
    code: str | None = None  # the ``error`` of an error answer
    env: str = "normal"  # "normal", "tokens", "signed", "guessing", "limited", "down", "redis_down" or "unseeded"
    times: int = 1  # send it this many times; the last answer is checked
    kwargs: dict[str, Any] = field(default_factory=dict)  # for the test client's ``open``
    headers_present: tuple[str, ...] = ()
    documented_as: str | None = None  # a 405's documented method on the same path
    before: dict[str, Any] | None = None  # a request sent once first (to the same path), e.g. to use a key

    def __str__(self) -> str:
        return f"{self.env}:{self.method} {self.path}->{self.status}{':' + self.code if self.code else ''}"


def body(data: bytes, content_type: str | None = JSON, **headers: str) -> dict[str, Any]:
    sent: dict[str, Any] = {"data": data, "headers": headers}
    if content_type:
        sent["content_type"] = content_type
    return sent


KEY = {"Idempotency-Key": "order-42"}
INGESTION_CASES = [
    Row("POST", "/dummy", 202, kwargs=body(b'{"hello": "w\xc3\xb6rld"}'), headers_present=("Location",)),
    Row(
        "POST",
        "/dummy",
        202,
        times=2,
        kwargs=body(b'{"a": 1}', **KEY),
        headers_present=("Location", "Idempotent-Replayed"),
    ),
    Row("POST", "/dummy", 400, "malformed_json", kwargs=body(b"{bad json")),
    Row("POST", "/dummy", 400, "invalid_utf8", kwargs=body(b'{"a": "\xff"}')),
    Row("POST", "/dummy", 400, "too_deep", kwargs=body(b"[" * 1100 + b"]" * 1100)),
    Row("POST", "/dummy", 400, "empty_body", kwargs=body(b"")),
    Row("POST", "/dummy", 400, "not_an_object", kwargs=body(b"[1, 2]")),
    Row("POST", "/dummy", 400, "bad_idempotency_key", kwargs=body(b"{}", **{"Idempotency-Key": "x" * 256})),
    Row("POST", "/dummy", 413, "too_large", kwargs=body(b'{"a": "' + b"x" * 5000 + b'"}')),
    Row("POST", "/dummy", 422, "idempotency_key_reused", kwargs=body(b'{"a": 2}', **KEY), before=body(b"{}", **KEY)),
    Row("POST", "/dummy", 415, "unsupported_media_type", kwargs=body(b'{"a": 1}', "text/plain")),
    Row("POST", "/dummy", 415, "unsupported_media_type", kwargs=body(b'{"a": 1}', None)),
    Row("POST", "/dummy", 401, "unauthorized", env="tokens", kwargs=body(b"{}")),
    Row("POST", "/dummy", 401, "unauthorized", env="tokens", kwargs=body(b"{}", Authorization="Bearer wrong")),
    Row("POST", "/dummy", 202, env="tokens", kwargs=body(b"{}", **BEARER)),
    Row("POST", "/dummy", 202, env="signed", kwargs=body(b"{}", **PUBLISH_ANY)),
    Row("POST", "/dummy", 401, "token_expired", env="signed", kwargs=body(b"{}", **EXPIRED)),
    Row("POST", "/dummy", 401, "unauthorized", env="signed", kwargs=body(b"{}")),
    Row("POST", "/dummy", 403, "forbidden", env="signed", kwargs=body(b"{}", **PUBLISH_ELSEWHERE)),
    Row(
        "POST",
        "/dummy",
        429,
        "too_many_requests",
        env="limited",
        times=3,
        kwargs=body(b"{}"),
        headers_present=("Retry-After", "RateLimit-Policy", "RateLimit", "X-RateLimit-Remaining"),
    ),
    Row("POST", "/dummy", 202, env="limited", kwargs=body(b"{}"), headers_present=("RateLimit-Policy", "RateLimit")),
    Row("POST", "/dummy", 429, "too_many_requests", env="guessing", times=3, headers_present=("Retry-After",)),
    Row("POST", "/dummy", 503, "queue_unavailable", env="down", kwargs=body(b"{}"), headers_present=("Retry-After",)),
    Row(
        "POST",
        "/dummy",
        503,
        "positions_unseeded",
        env="unseeded",
        kwargs=body(b"{}"),
        headers_present=("Retry-After",),
    ),
    Row("POST", "/dummy/batch", 202, kwargs=body(b'[{"n": 1}, {"n": 2}]')),
    Row(
        "POST",
        "/dummy/batch",
        202,
        times=2,
        kwargs=body(b'[{"n": 1}]', **KEY),
        headers_present=("Idempotent-Replayed",),
    ),
    Row("POST", "/dummy/batch", 400, "malformed_json", kwargs=body(b"[{]")),
    Row("POST", "/dummy/batch", 400, "empty_body", kwargs=body(b"")),
    Row("POST", "/dummy/batch", 400, "not_an_array", kwargs=body(b"{}")),
    Row("POST", "/dummy/batch", 400, "bad_batch_size", kwargs=body(b"[]")),
    Row("POST", "/dummy/batch", 400, "bad_batch_size", kwargs=body(b"[" + b",".join([b"{}"] * 1001) + b"]")),
    Row("POST", "/dummy/batch", 400, "not_an_object", kwargs=body(b'[{"n": 1}, 2]')),
    Row("POST", "/dummy/batch", 413, "too_large", kwargs=body(b'[{"a": "' + b"x" * 9000 + b'"}]')),
    Row(
        "POST",
        "/dummy/batch",
        429,
        "batch_over_rate_limit",
        env="limited",
        kwargs=body(b"[{}, {}, {}]"),
        headers_present=("RateLimit-Policy", "RateLimit"),
    ),
    Row(
        "POST",
        "/dummy/batch",
        422,
        "idempotency_key_reused",
        kwargs=body(b"[{}, {}]", **KEY),
        before=body(b"[{}]", **KEY),
    ),
    Row("POST", "/dummy/batch", 415, "unsupported_media_type", kwargs=body(b"[{}]", "text/plain")),
    Row("POST", "/dummy/batch", 401, "unauthorized", env="tokens", kwargs=body(b"[{}]")),
    Row("POST", "/dummy/batch", 202, env="tokens", kwargs=body(b"[{}]", **BEARER)),
    Row("POST", "/dummy/batch", 202, env="signed", kwargs=body(b"[{}]", **PUBLISH_ANY)),
    Row("POST", "/dummy/batch", 401, "token_expired", env="signed", kwargs=body(b"[{}]", **EXPIRED)),
    Row("POST", "/dummy/batch", 403, "forbidden", env="signed", kwargs=body(b"[{}]", **PUBLISH_ELSEWHERE)),
    Row("POST", "/dummy/batch", 429, "too_many_requests", env="limited", times=3, kwargs=body(b"[{}]")),
    Row("POST", "/dummy/batch", 503, "queue_unavailable", env="down", kwargs=body(b"[{}]")),
    Row("POST", "/dummy/batch", 503, "positions_unseeded", env="unseeded", kwargs=body(b"[{}]")),
    Row("GET", "/healthz", 200),
    Row("GET", "/healthz", 503, "redis_unavailable", env="down", headers_present=("Retry-After",)),
    Row("GET", "/openapi.json", 200),
    Row("GET", "/metrics", 200),
    *(
        Row("POST", f"/channels/{name}/messages{tail}", 400, "bad_channel", kwargs=body(b"[{}]" if tail else b"{}"))
        for name in ("", "a%20b", "x" * 65, "%C3%A9")  # a "/" matches no documented path: tests/ingestion
        for tail in ("", "/batch")
    ),
    # Open even when tokens are required, and never rate limited (probes and scrapers).
    *(Row("GET", path, 200, env="tokens") for path in ("/healthz", "/openapi.json", "/metrics")),
    *(Row("GET", path, 200, env="limited", times=5) for path in ("/healthz", "/openapi.json", "/metrics")),
]
# A channel's publishing endpoints answer exactly as the seed's: every row of theirs, again on a channel.
CHANNEL = "news.eu:1"
INGESTION_CASES += [
    dataclasses.replace(row, path=row.path.replace("/dummy", f"/channels/{CHANNEL}/messages"))
    for row in INGESTION_CASES
    if row.path.startswith("/dummy")
]
LIST_CASES = [
    Row("GET", "/messages", 200, kwargs={"query_string": "limit=2"}, headers_present=("Link",)),
    Row("GET", "/messages", 200, kwargs={"query_string": "order=desc&limit=1000"}),
    Row("GET", "/messages", 400, "bad_limit", kwargs={"query_string": "limit=0"}),
    Row("GET", "/messages", 400, "bad_limit", kwargs={"query_string": "limit=abc"}),
    Row("GET", "/messages", 400, "bad_order", kwargs={"query_string": "order=sideways"}),
    Row("GET", "/messages", 400, "bad_cursor", kwargs={"query_string": "cursor=garbage"}),
    Row("GET", "/messages", 400, "unknown_parameter", kwargs={"query_string": "colour=blue"}),
    Row("GET", "/messages", 401, "unauthorized", env="tokens"),
    Row("GET", "/messages", 401, "unauthorized", env="tokens", kwargs={"headers": {"Authorization": "Bearer no"}}),
    Row("GET", "/messages", 200, env="tokens", kwargs={"headers": BEARER}),
    Row("GET", "/messages", 200, env="signed", kwargs={"headers": signed({"*": ["history"]})}),
    Row("GET", "/messages", 401, "token_expired", env="signed", kwargs={"headers": EXPIRED}),
    Row("GET", "/messages", 403, "forbidden", env="signed", kwargs={"headers": signed({"dummy": ["history"]})}),
    Row("GET", "/messages", 429, "too_many_requests", env="guessing", times=3, headers_present=("Retry-After",)),
    Row("GET", "/messages", 503, "database_unavailable", env="down", headers_present=("Retry-After",)),
    Row("GET", "/messages", 503, "redis_unavailable", env="redis_down", headers_present=("Retry-After",)),
    Row("GET", "/messages", 200, kwargs={"query_string": "after=2&limit=2"}, headers_present=("Link",)),
    Row("GET", "/messages", 200, kwargs={"query_string": "after=4&order=desc"}),
    Row("GET", "/messages", 400, "bad_after", kwargs={"query_string": "after=-1"}),
    Row("GET", "/messages", 400, "bad_after", kwargs={"query_string": f"after=1&cursor={CURSOR}"}),
    Row("GET", f"/messages/{STORED}", 200, headers_present=("Cache-Control", "ETag")),
    Row("GET", f"/messages/{STORED}", 304, kwargs={"headers": {"If-None-Match": "*"}}),
    Row("GET", f"/messages/{PENDING}", 200, headers_present=("Cache-Control",)),
    Row("GET", f"/messages/{STORED}", 200, env="redis_down"),
    Row("GET", f"/messages/{UNKNOWN_ID}", 404, "not_found"),
    Row("GET", "/messages/not-an-id", 404, "not_found"),
    Row("GET", f"/messages/{STORED}", 401, "unauthorized", env="tokens"),
    Row("GET", f"/messages/{STORED}", 200, env="tokens", kwargs={"headers": BEARER}),
    Row("GET", f"/messages/{STORED}", 200, env="signed", kwargs={"headers": signed({"dum*": ["history"]})}),
    # The stored message is on "dummy": for a token that may not read it, it does not exist.
    Row("GET", f"/messages/{STORED}", 404, "not_found", env="signed", kwargs={"headers": PUBLISH_ELSEWHERE}),
    Row("GET", f"/messages/{STORED}", 401, "token_expired", env="signed", kwargs={"headers": EXPIRED}),
    Row("GET", f"/messages/{STORED}", 429, "too_many_requests", env="guessing", times=3),
    Row("GET", f"/messages/{UNKNOWN_ID}", 503, "database_unavailable", env="down"),
    Row("GET", f"/messages/{UNKNOWN_ID}", 503, "redis_unavailable", env="redis_down", headers_present=("Retry-After",)),
    Row("GET", "/healthz", 200),
    Row("GET", "/healthz", 503, "database_unavailable", env="down", headers_present=("Retry-After",)),
    Row("GET", "/", 200),
    Row("GET", "/relay-client.js", 200),
    Row("GET", "/openapi.json", 200),
    Row("GET", "/metrics", 200),
    *(
        Row("GET", path, 200, env="tokens")
        for path in ("/healthz", "/", "/relay-client.js", "/openapi.json", "/metrics")
    ),
    Row("GET", "/channels", 200, kwargs={"query_string": "limit=1"}, headers_present=("Link",)),
    Row("GET", "/channels", 400, "bad_limit", kwargs={"query_string": "limit=1001"}),
    Row("GET", "/channels", 400, "bad_cursor", kwargs={"query_string": "cursor=garbage"}),
    Row("GET", "/channels", 400, "unknown_parameter", kwargs={"query_string": "order=desc"}),
    Row("GET", "/channels", 401, "unauthorized", env="tokens"),
    Row("GET", "/channels", 200, env="tokens", kwargs={"headers": BEARER}),
    Row("GET", "/channels", 200, env="signed", kwargs={"headers": signed({CHANNEL: ["history"]})}),
    Row("GET", "/channels", 401, "token_expired", env="signed", kwargs={"headers": EXPIRED}),
    Row("GET", "/channels", 429, "too_many_requests", env="guessing", times=3),
    Row("GET", "/channels", 503, "database_unavailable", env="down", headers_present=("Retry-After",)),
    Row("GET", f"/channels/{CHANNEL}/messages", 200, kwargs={"query_string": "limit=1"}, headers_present=("Link",)),
    Row("GET", "/channels/nobody-here/messages", 200),
    Row("GET", f"/channels/{CHANNEL}/messages", 400, "bad_limit", kwargs={"query_string": "limit=0"}),
    Row("GET", f"/channels/{CHANNEL}/messages", 400, "bad_order", kwargs={"query_string": "order=up"}),
    Row("GET", f"/channels/{CHANNEL}/messages", 400, "bad_cursor", kwargs={"query_string": "cursor=x"}),
    Row("GET", f"/channels/{CHANNEL}/messages", 400, "unknown_parameter", kwargs={"query_string": "x=1"}),
    *(Row("GET", f"/channels/{name}/messages", 400, "bad_channel") for name in ("", "a%20b", "x" * 65)),
    Row("GET", f"/channels/{CHANNEL}/messages", 401, "unauthorized", env="tokens"),
    Row("GET", f"/channels/{CHANNEL}/messages", 200, env="tokens", kwargs={"headers": BEARER}),
    Row("GET", f"/channels/{CHANNEL}/messages", 200, env="signed", kwargs={"headers": signed({"news.*": ["history"]})}),
    Row("GET", f"/channels/{CHANNEL}/messages", 403, "forbidden", env="signed", kwargs={"headers": PUBLISH_ELSEWHERE}),
    Row("GET", f"/channels/{CHANNEL}/messages", 401, "token_expired", env="signed", kwargs={"headers": EXPIRED}),
    Row("GET", f"/channels/{CHANNEL}/messages", 429, "too_many_requests", env="guessing", times=3),
    Row("GET", f"/channels/{CHANNEL}/messages", 503, "database_unavailable", env="down"),
    Row("GET", f"/channels/{CHANNEL}/messages", 503, "redis_unavailable", env="redis_down"),
    Row("GET", f"/channels/{CHANNEL}/messages", 200, kwargs={"query_string": "after=1&order=desc"}),
    Row("GET", f"/channels/{CHANNEL}/messages", 400, "bad_after", kwargs={"query_string": "after=1.5"}),
    Row("GET", "/channels", 200, env="redis_down"),  # counts come from the database alone
]


def wrong_methods(service: str) -> list[Row]:
    """A 405 row for every method a documented path does not take."""
    rows = []
    for path, item in spec(service)["paths"].items():
        documented = sorted(item)[0].upper()
        concrete = path.replace("{message_id}", UNKNOWN_ID).replace("{channel}", CHANNEL)
        for method in METHODS:
            if method.lower() not in item:
                rows.append(Row(method, concrete, 405, "method_not_allowed", documented_as=documented))
    return rows


INGESTION_ROWS = INGESTION_CASES + wrong_methods("ingestion_api")
LIST_ROWS = LIST_CASES + wrong_methods("list_api")


class Conformance:
    """Send requests to an app and check each answer against the document the app serves."""

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()
        document = self.client.get("/openapi.json").get_json()
        # openapi-core reads text/html and text/plain bodies as text; JavaScript (GET /relay-client.js) too.
        text = Config(extra_media_type_deserializers={"text/javascript": plain_loads})
        self.openapi = OpenAPI.from_dict(document, config=text)

    def check(self, row: Row, path: str) -> TestResponse:
        if row.before is not None:
            self.client.open(path, method=row.method, **row.before)
        for _ in range(row.times):
            response = self.client.open(path, method=row.method, **row.kwargs)
        # A 405 belongs to the path: check it against the answers of the method the path documents.
        # (A fresh request object: the test client's has had its body read by the app.)
        request = EnvironBuilder(path=path, method=row.documented_as or row.method).get_request()
        assert response.status_code == row.status, f"{row}: got {response.status_code} {response.get_data()[:300]!r}"
        self.openapi.validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(response))
        if row.code:
            assert response.get_json()["error"] == row.code
        for name in row.headers_present:
            assert response.headers.get(name), f"{row}: no {name} header"
        return response


def configure(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """Set the environment a row needs before its app is created."""
    monkeypatch.delenv("API_TOKENS", raising=False)
    monkeypatch.delenv("RATE_LIMIT", raising=False)
    monkeypatch.delenv("AUTH_FAILURE_LIMIT", raising=False)
    for name in ("JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_AUDIENCE", "JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    if env in ("tokens", "guessing"):
        monkeypatch.setenv("API_TOKENS", TOKEN)
    elif env == "signed":
        monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    if env == "guessing":
        monkeypatch.setenv("AUTH_FAILURE_LIMIT", "2/minute")
    elif env == "limited":
        monkeypatch.setenv("RATE_LIMIT", "2/minute")


def ingestion_app(redis_url: str, env: str = "normal") -> Flask:
    url = f"redis://127.0.0.1:{free_port()}/0" if env == "down" else redis_url
    if env == "unseeded":
        redis.Redis.from_url(redis_url).delete("persist:positions")
    config = {"redis_url": url, "list_api_url": "http://lists.example", "max_message_bytes": 4096}
    return in_process_ingestion_app(**{**config, "max_batch_bytes": 8192})


def unreachable(database_url: str, tmp_path: Path) -> str:
    """A database of the same kind that cannot be reached: no server on the port, or no such directory."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path}/missing/dir/x.db"
    return url.set(host="127.0.0.1", port=free_port()).render_as_string(hide_password=False)


@pytest.fixture
def list_app_factory(make_list_app: Callable[..., Flask], database_url: str, tmp_path: Path) -> Callable[..., Flask]:
    """Make list apps on the clean database (or, for "down", on one that cannot be opened; "redis_down", no Redis)."""

    def make(env: str = "normal") -> Flask:
        if env == "down":
            return make_list_app(sqlalchemy_database_uri=unreachable(database_url, tmp_path))
        if env == "redis_down":
            return make_list_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
        return make_list_app()

    return make


def store(app: Flask, count: int) -> list[str]:
    """Store ``count`` messages, alternately on the channels ``dummy`` and ``CHANNEL``; their ids."""
    records = [
        make_record({"n": i}, dt.datetime(2026, 11, 29, 8, 0, 0, i), channel=("dummy", CHANNEL)[i % 2])
        for i in range(count)
    ]
    return accepted.store(app, records)


@pytest.mark.parametrize("service", SERVICES)
def test_document_is_valid_openapi_3_1(service: str) -> None:
    document = spec(service)
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_documents_cover_the_endpoints() -> None:
    def operations(service: str) -> set[str]:
        return {f"{m.upper()} {p}" for p, item in spec(service)["paths"].items() for m in item}

    common = {"GET /healthz", "GET /openapi.json", "GET /metrics"}
    channel = {"POST /channels/{channel}/messages", "POST /channels/{channel}/messages/batch"}
    assert operations("ingestion_api") == {"POST /dummy", "POST /dummy/batch"} | channel | common
    listing = {"GET /messages", "GET /messages/{message_id}", "GET /channels", "GET /channels/{channel}/messages"}
    assert operations("list_api") == listing | {"GET /", "GET /relay-client.js"} | common


def routes(app: Flask) -> set[str]:
    """The app's routes as "METHOD /path/{param}", without Flask's automatic HEAD and OPTIONS."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask's default static route: there is no static folder, so always 404
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        found |= {f"{m} {path}" for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return found


def test_every_route_is_documented_and_every_operation_routed(redis_url: str, list_app_factory: Any) -> None:
    for service, app in (("ingestion_api", ingestion_app(redis_url)), ("list_api", list_app_factory())):
        documented = {f"{m.upper()} {p}" for p, item in spec(service)["paths"].items() for m in item}
        assert routes(app) == documented, service


def test_each_app_serves_its_document_with_its_own_limits(redis_url: str) -> None:
    app = in_process_ingestion_app(redis_url, max_batch_messages=10)
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.mimetype == JSON
    batch = served.get_json()["paths"]["/dummy/batch"]["post"]["requestBody"]["content"][JSON]["schema"]
    assert batch["maxItems"] == 10
    batch = spec("ingestion_api")["paths"]["/dummy/batch"]["post"]["requestBody"]["content"][JSON]["schema"]
    assert batch["maxItems"] == load_settings({}).max_batch_messages


def test_documented_limit_is_the_one_the_view_enforces(list_app_factory: Any) -> None:
    """The document's maximum is accepted, one more is refused, and its default is the page size."""
    app = list_app_factory()
    [limit] = [p for p in spec("list_api")["paths"]["/messages"]["get"]["parameters"] if p["name"] == "limit"]
    maximum, default = limit["schema"]["maximum"], limit["schema"]["default"]
    store(app, default + 1)
    client = app.test_client()
    assert client.get(f"/messages?limit={maximum}").status_code == 200
    assert client.get(f"/messages?limit={maximum + 1}").get_json()["error"] == "bad_limit"
    assert len(client.get("/messages").get_json()["data"]) == default


def test_an_undocumented_route_stops_the_app_from_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A view without an operation cannot be served: the factory raises instead of serving a partial document."""

    def index() -> str:
        return "a view without @operation"

    monkeypatch.setattr(listing, "index", index)
    with pytest.raises(LookupError, match="'index' has no OpenAPI operation"):
        list_api.create_app({"sqlalchemy_database_uri": "sqlite://"})


def documented_statuses(service: str) -> set[str]:
    """Every (method, path, status) the document promises, a 405 counted once per path."""
    found = set()
    for path, item in spec(service)["paths"].items():
        for method, operation in item.items():
            found |= {f"{method.upper()} {path} {s}" for s in operation["responses"] if s != "405"}
        found.add(f"* {path} 405")
    return found


def exercised_statuses(rows: list[Row]) -> set[str]:
    found = set()
    for row in rows:
        path = re.sub(r"^/channels/[^?]*?/messages", "/channels/{channel}/messages", row.path)
        path = re.sub(r"^/messages/[^/]+$", "/messages/{message_id}", path)
        method = "*" if row.documented_as else row.method
        found.add(f"{method} {path} {row.status}")
    return found


@pytest.mark.parametrize(("service", "rows"), [("ingestion_api", INGESTION_ROWS), ("list_api", LIST_ROWS)])
def test_every_documented_status_is_exercised(service: str, rows: list[Row]) -> None:
    assert documented_statuses(service) == exercised_statuses(rows)


@pytest.mark.parametrize("row", INGESTION_ROWS, ids=str)
def test_ingestion_api_answers_as_documented(row: Row, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, row.env)
    Conformance(ingestion_app(redis_url, row.env)).check(row, row.path)


@pytest.mark.parametrize("row", LIST_ROWS, ids=str)
def test_list_api_answers_as_documented(row: Row, list_app_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, row.env)
    app = list_app_factory(row.env)
    path = row.path
    if row.env != "down":
        writer = list_app_factory() if row.env == "redis_down" else app  # one whose Redis answers
        [first, *_] = store(writer, 5)
        [pending] = accepted.accept(writer, [make_record({"n": 5}, dt.datetime(2026, 11, 29, 8, 0, 1))])
        path = path.replace(STORED, first).replace(PENDING, pending)
    Conformance(app).check(row, path)


@pytest.mark.parametrize(
    ("first", "then"), [(("/dummy", b"{}"), ("/dummy/batch", b"[{}]")), (("/dummy/batch", b"[{}]"), ("/dummy", b"{}"))]
)
def test_idempotency_key_reused_on_the_other_endpoint_keeps_that_endpoints_shape(
    redis_url: str, first: tuple[str, bytes], then: tuple[str, bytes]
) -> None:
    """A key used on one publish endpoint, then on the other, must get an answer of the second one's shape."""
    conformance = Conformance(ingestion_app(redis_url))
    assert conformance.client.post(first[0], data=first[1], content_type=JSON, headers=KEY).status_code == 202
    again = conformance.client.post(then[0], data=then[1], content_type=JSON, headers=KEY)
    request = EnvironBuilder(path=then[0], method="POST").get_request()
    conformance.openapi.validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(again))


def api_sections(text: str) -> dict[str, str]:
    """Split docs/api.md into its "## Ingestion API" and "## List API" sections."""
    parts = re.split(r"^## ", text, flags=re.M)
    titles = {"ingestion_api": "Ingestion API", "list_api": "List API"}
    return {service: next(p for p in parts if p.startswith(title)) for service, title in titles.items()}


@pytest.mark.parametrize("service", SERVICES)
def test_docs_describe_every_operation_and_status(service: str) -> None:
    """docs/api.md has a section per operation naming each of its statuses, and every error code."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = api_sections(text)[service]
    operations = re.split(r"^### ", section, flags=re.M)
    for path, item in spec(service)["paths"].items():
        for method, operation in item.items():
            name = f"`{method.upper()} {path}`"
            [described] = [o for o in operations if o.startswith(name)] or [""]
            assert described, f"docs/api.md has no '### {name}' under its {service} section"
            for status in operation["responses"]:
                if status != "405":
                    assert f"`{status}`" in described, f"{name}: status {status} is not described"
    assert "`405`" in text and "method_not_allowed" in text
    codes = set(re.findall(r"`([a-z][a-z0-9_]*)`", orjson.dumps(spec(service)).decode()))
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert not missing, f"error codes not in docs/api.md: {missing}"
