"""Presented tokens: reading ``Authorization: Bearer``, and comparing static ``API_TOKENS``.

Static tokens are compared in constant time and never logged; a request
presents one as ``Authorization: Bearer <token>``, or for browsers'
websockets as a ``?token=`` query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def token_ok(presented: str | None, tokens: Iterable[str]) -> bool:
    """Tell whether ``presented`` is one of ``tokens``, comparing every one in constant time."""
    if presented is None:
        return False
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def bearer(header: str | None) -> str | None:
    """Extract the token from an ``Authorization: Bearer <token>`` header value."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def client_for_token(token: str) -> str:
    """The rate-limit and idempotency identity of a static token (a digest: tokens are never stored)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
