"""Message validation, ids and timestamps (no services needed)."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.records import (
    InvalidMessage,
    format_time,
    is_channel,
    is_message_id,
    live_frame,
    make_record,
    new_id,
    parse_batch,
    parse_message,
    parse_time,
)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b"{", "malformed_json"),
        (b"{'a': 1}", "malformed_json"),
        (b'{"a": NaN}', "malformed_json"),
        (b'{"a": 1e400}', "malformed_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"a": "\xc3"}', "invalid_utf8"),
        (b'{"a": "\\ud800"}', "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"null", "not_an_object"),
        (b"3", "not_an_object"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, "too_deep"),
    ],
)
def test_parse_message_rejects_bad_bodies_with_a_code(body: bytes, code: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(body)
    assert info.value.code == code
    assert info.value.message


def test_parse_message_keeps_unicode_escapes_and_nul_exactly() -> None:
    body = '{"text": "wörld 🎉 \\"q\\" \\\\ \\n \\u0000 \\u2028", "n": [1, -2.5, 1e-7, null, true]}'.encode()
    payload = parse_message(body)
    assert payload["text"] == 'wörld 🎉 "q" \\ \n \x00 \u2028'
    assert orjson.loads(make_record(payload, dt.datetime(2026, 1, 1))["payload"]) == payload


def test_parse_message_duplicate_keys_keep_the_last_value() -> None:
    assert parse_message(b'{"a": 1, "a": 2}') == {"a": 2}


def test_parse_message_huge_integer_becomes_a_double() -> None:
    assert parse_message(b'{"n": 123456789012345678901234567890}') == {"n": 1.2345678901234568e29}


def test_parse_batch_is_all_or_nothing() -> None:
    assert parse_batch(b'[{"a": 1}, {"b": 2}]', 10) == [{"a": 1}, {"b": 2}]
    with pytest.raises(InvalidMessage) as info:
        parse_batch(b'[{"a": 1}, 2]', 10)
    assert info.value.code == "not_an_object" and "Element 1" in info.value.message


@pytest.mark.parametrize(("body", "code"), [(b"[]", "bad_batch_size"), (b"[{}, {}, {}]", "bad_batch_size")])
def test_parse_batch_enforces_size(body: bytes, code: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_batch(body, 2)
    assert info.value.code == code


def test_parse_batch_rejects_an_object() -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_batch(b'{"a": 1}', 10)
    assert info.value.code == "not_an_array"


def test_new_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [new_id() for _ in range(2000)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_is_message_id_accepts_only_canonical_uuids() -> None:
    assert is_message_id(new_id())
    assert not is_message_id(new_id().upper())
    assert not is_message_id("not-a-uuid")
    assert not is_message_id("")


def test_time_format_is_rfc3339_utc_with_microseconds() -> None:
    moment = dt.datetime(2026, 11, 29, 7, 40, 21, 123456)
    assert format_time(moment) == "2026-11-29T07:40:21.123456Z"
    assert parse_time(format_time(moment)) == moment


def test_live_frame_embeds_the_payload_as_json() -> None:
    record = make_record({"x": "é"}, dt.datetime(2026, 1, 1))
    frame = orjson.loads(live_frame(record))
    expected = {"id": record["id"], "channel": "dummy", "received_at": "2026-01-01T00:00:00.000000Z"}
    assert frame == {**expected, "payload": {"x": "é"}}
    other = make_record({}, dt.datetime(2026, 1, 1), channel="news")
    assert orjson.loads(live_frame(other))["channel"] == "news"


def test_channel_names_are_1_to_64_of_the_allowed_characters() -> None:
    assert all(map(is_channel, ["a", "x" * 64, "AZaz09_.:-", "orders.eu:1"]))
    assert not any(map(is_channel, ["", "x" * 65, "a b", "a/b", "é", "a\n", "a\x00", "\uff41"]))


@given(st.binary(max_size=200))
def test_parse_message_never_fails_with_anything_but_invalid_message(body: bytes) -> None:
    try:
        assert isinstance(parse_message(body), dict)
    except InvalidMessage as exc:
        assert exc.code


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_json_object_round_trips_through_a_record(payload: dict) -> None:
    record = make_record(parse_message(orjson.dumps(payload)), dt.datetime(2026, 1, 1))
    assert orjson.loads(record["payload"]) == payload
