"""The cursor codec: round trips, and rejects anything it did not issue."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.listing.cursor import CursorCodec, InvalidCursor

codec = CursorCodec("test-secret")


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_cursor_round_trips(seq: int) -> None:
    assert codec.decode(codec.encode(seq)) == seq


def test_cursor_is_opaque_text() -> None:
    cursor = codec.encode(12345)
    assert "12345" not in cursor
    assert cursor.isascii()


@pytest.mark.parametrize("mutate", [lambda c: c[:-1], lambda c: "x" + c, lambda c: c.replace(".", ".A"), str.upper])
def test_tampered_cursor_is_rejected(mutate) -> None:
    with pytest.raises(InvalidCursor):
        codec.decode(mutate(codec.encode(42)))


def test_cursor_from_another_secret_is_rejected() -> None:
    with pytest.raises(InvalidCursor):
        codec.decode(CursorCodec("other").encode(42))


def test_signed_non_integer_is_rejected() -> None:
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("test-secret", salt="messages.cursor.v1").dumps("42")
    with pytest.raises(InvalidCursor):
        codec.decode(forged)


@given(st.text())
def test_any_string_is_a_cursor_or_invalid(text: str) -> None:
    with contextlib.suppress(InvalidCursor):
        assert isinstance(codec.decode(text), int)
