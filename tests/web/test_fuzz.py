"""Hostile input: both HTTP APIs fuzzed from their own OpenAPI documents.

schemathesis generates requests, valid and invalid, for every operation of
each document: the document's examples, the coverage phase's boundary and
type-confusion cases (and wrong methods), then random ones. Each request
goes in process (WSGI) to an app on a real Redis or a real SQLite file, run
three times: open, guarded (``API_TOKENS`` and a low ``RATE_LIMIT``, the
client sending its token), and signed (``JWT_SECRET`` and the same limit, the
client sending a signed token that may publish to or read a few channels
only, so that 403s and hidden messages get fuzzed too). Every answer must be documented: no 5xx, every 4xx the
JSON error shape, status, headers, content type and body as the document says.

Each document is the one an app of that API serves at ``/openapi.json``
(``tests.helpers.openapi_document``), loaded with ``from_dict``, and each
fuzzed app is checked to serve exactly that: the lazy
``schemathesis.pytest.from_fixture`` way of fuzzing a fixture's app fails on
pytest 9.2 (it sets ``request.node._nodeid``, which pytest 9.2 removed).

A recorder wrapped around each app sees every request, including the extra
ones schemathesis's checks send, checks each answer independently of
schemathesis, and prints the totals at the end ("fuzz both APIs: N requests,
0 5xx"). ``FUZZ_MAX_EXAMPLES`` (default 100) bounds the random phase per
operation. Explicit regressions for inputs the fuzzer is unlikely to draw
sit at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jwt
import orjson
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from werkzeug.test import run_wsgi_app

import list_api
from relay import storage
from relay.listing.cursor import ChannelCursorCodec, CursorCodec
from relay.records import make_record
from tests.helpers import clear_database, in_process_ingestion_app, openapi_document
from tests.listing import accepted

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
SECRET = "fuzz-secret"
TOKEN = "fuzz-token"
JWT_SECRET = "fuzz-jwt-secret-of-at-least-32-bytes"
# What the signed variant's token allows: some channels of the stored ones (c0, c1, c2), not all.
SIGNED_CHANNELS = {"c0": ["history"], "c1*": ["history", "subscribe"], "dummy": ["publish"], "news.*": ["publish"]}
EXAMPLE_ID = "019ace2e-7b1a-7c3e-9f10-2b4c6d8e0a12"  # the id in the document's examples
# Built at import, as schemathesis parametrizes the tests from them, before pytest sets
# PYTEST_CURRENT_TEST: relay.settings ignores a running scripts/run.sh stack for the whole session
# (PYTEST_VERSION), so these are the documents the fixtures' apps serve, stack or no stack.
INGESTION = openapi_document("ingestion_api")
LISTING = openapi_document("list_api")
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        # Valid data may still be refused for the server's state: an Idempotency-Key the fuzzer
        # reuses with another body is 422, as documented (the defaults plus 413 and 422).
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 413, 422, 429, "5xx"]}
        },
    }
)


def is_error_shape(body: bytes, content_type: str) -> bool:
    """Tell whether ``body`` is ``{"error": code, "message": text}`` sent as JSON."""
    if not content_type.startswith("application/json"):
        return False
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"error", "message"}
        and all(isinstance(v, str) and v for v in value.values())
    )


class Recorder:
    """WSGI middleware that counts every exchange and keeps the ones that break the rules."""

    def __init__(self, app: Flask, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers  # what a client of this app sends with every request (its token)
        self.statuses: Counter[int] = Counter()
        self.broken: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app_iter, status, headers = run_wsgi_app(self.app, environ, buffered=True)
        body = b"".join(app_iter)
        code = int(status.split(None, 1)[0])
        self.statuses[code] += 1
        method = environ["REQUEST_METHOD"]
        shaped = method == "HEAD" or is_error_shape(body, headers.get("Content-Type", ""))
        if code >= 500 or (code >= 400 and not shaped):
            query = environ.get("QUERY_STRING", "")
            self.broken.append(f"{method} {environ['PATH_INFO']}?{query} -> {status} {body[:300]!r}")
        start_response(status, headers.to_wsgi_list())
        return [body]

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def summary(name: str, statuses: Counter[int]) -> str:
    """One line for the closing note: "fuzz <api>: N requests, 0 5xx (status: count, ...)"."""
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    by_status = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
    return f"fuzz {name}: {sum(statuses.values())} requests, {server_errors} 5xx ({by_status})"


def json_error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Check that a 4xx/5xx answer is the JSON error shape (so Hypothesis shrinks a failing input)."""
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        content_type = response.headers.get("content-type", [""])[0]
        assert is_error_shape(response.content, content_type), (
            f"{response.status_code} answer is not the JSON error shape: {response.content[:300]!r}"
        )
    return None


@pytest.fixture(scope="module")
def totals(request: pytest.FixtureRequest) -> Iterator[dict[str, Counter[int]]]:
    """Status counts per API over the whole module, printed at the end."""
    counts: dict[str, Counter[int]] = {"ingestion_api": Counter(), "list_api": Counter()}
    yield counts
    counts["both APIs"] = counts["ingestion_api"] + counts["list_api"]
    lines = [summary(name, statuses) for name, statuses in counts.items()]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def record(recorder: Recorder, totals: dict[str, Counter[int]], name: str) -> None:
    """Add one operation's counts to the totals, then fail if any answer broke the rules."""
    totals[name].update(recorder.statuses)
    assert not recorder.broken, "answers that are a 5xx or not the JSON error shape:\n" + "\n".join(
        recorder.broken[:20]
    )
    assert recorder.total >= 5, f"only {recorder.total} requests were made"


def guard(monkeypatch: pytest.MonkeyPatch, mode: str) -> dict[str, str]:
    """Set the access environment of ``mode``; return the headers a client then sends."""
    for name in ("API_TOKENS", "RATE_LIMIT", "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_AUDIENCE", "JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    if mode == "open":
        return {}
    monkeypatch.setenv("RATE_LIMIT", "50/minute")  # reached within an operation's run: 429s get fuzzed too
    if mode == "signed":
        monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
        claims = {"sub": "fuzzer", "exp": int(dt.datetime.now(dt.UTC).timestamp()) + 3600, "channels": SIGNED_CHANNELS}
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}
    monkeypatch.setenv("API_TOKENS", TOKEN)
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["open", "guarded", "signed"])
def ingestion_app(
    redis_url: str, totals: dict[str, Counter[int]], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Recorder]:
    headers = guard(monkeypatch, request.param)
    app = in_process_ingestion_app(redis_url, list_api_url="http://lists.example")
    assert app.test_client().get("/openapi.json").get_json() == INGESTION, "the app serves another document"
    recorder = Recorder(app, headers)
    yield recorder
    record(recorder, totals, "ingestion_api")


@pytest.fixture(params=["open", "guarded", "signed"])
def list_app(
    sqlite_url: str,
    redis_url: str,
    totals: dict[str, Counter[int]],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Recorder]:
    headers = guard(monkeypatch, request.param)
    clear_database(sqlite_url)
    app = list_api.create_app({"sqlalchemy_database_uri": sqlite_url, "redis_url": redis_url, "secret_key": SECRET})
    assert app.test_client().get("/openapi.json").get_json() == LISTING, "the app serves another document"
    stamp = dt.datetime(2026, 11, 29, 8, 0, 0)
    records = [
        make_record({"n": i, "text": "ünïcode \u0000"}, stamp + dt.timedelta(microseconds=i), channel=f"c{i % 3}")
        for i in range(12)
    ]
    records[0]["id"] = EXAMPLE_ID  # so the examples phase reads a message that exists
    accepted.store(app, records)
    recorder = Recorder(app, headers)
    yield recorder
    with app.app_context():
        storage.db.engine.dispose()
    record(recorder, totals, "list_api")


ingestion = schemathesis.openapi.from_dict(INGESTION, config=CONFIG)
listing = schemathesis.openapi.from_dict(LISTING, config=CONFIG)
_codec = CursorCodec(SECRET)
_channel_codec = ChannelCursorCodec(SECRET)


@listing.hook
def map_case(context: Any, case: schemathesis.Case) -> schemathesis.Case:
    """Make the cursor of a valid (positive) case one this API could have issued, and never beside ``after``.

    The document can only say "a string"; a valid cursor is one the API signed. Nor can it say
    that ``cursor`` and ``after`` exclude each other: a valid case with both keeps the cursor
    (both together are a 400 ``bad_after``, tested in tests/listing). Invalid (negative) cases
    keep what was drawn, and must get a 400.
    """
    cursor = (case.query or {}).get("cursor")
    if isinstance(cursor, str) and case.meta is not None and case.meta.generation.mode.is_positive:
        position = int.from_bytes(hashlib.sha256(cursor.encode("utf-8", "replace")).digest()[:2]) % 20
        channels = case.path == "/channels"
        case.query["cursor"] = _channel_codec.encode(f"c{position}") if channels else _codec.encode(position)
        case.query.pop("after", None)
    return case


# One app per operation, shared by all its examples: state builds up, as it would in production.
SHARED_APP = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@ingestion.parametrize()
@SHARED_APP
def test_ingestion_api_answers_every_generated_request_as_documented(
    case: schemathesis.Case, ingestion_app: Recorder
) -> None:
    case.call_and_validate(app=ingestion_app, headers=ingestion_app.headers, additional_checks=[json_error_shape])


@listing.parametrize()
@SHARED_APP
def test_list_api_answers_every_generated_request_as_documented(case: schemathesis.Case, list_app: Recorder) -> None:
    case.call_and_validate(app=list_app, headers=list_app.headers, additional_checks=[json_error_shape])


@pytest.mark.parametrize(
    "limit",
    ["\u00b2", "\u00b9\u2070", "9" * 5000, "0" * 5000 + "1"],
    ids=["superscript-2", "superscript-10", "5000-nines", "5001-digits"],
)
def test_limit_that_python_calls_a_digit_but_int_rejects_is_a_400(sqlite_url: str, limit: str) -> None:
    """``str.isdigit`` accepts superscripts and any length; ``int`` does not: that must be a 400, not a 500."""
    clear_database(sqlite_url)
    app = list_api.create_app({"sqlalchemy_database_uri": sqlite_url, "secret_key": SECRET})
    response = app.test_client().get("/messages", query_string={"limit": limit})
    assert response.status_code == 400, response.get_data()[:200]
    assert response.get_json()["error"] == "bad_limit"
