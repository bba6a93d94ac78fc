"""Optional bearer-token access control, shared by the HTTP APIs and the websocket server.

When ``API_TOKENS`` is set (comma-separated), publishing, listing and
subscribing need one of the tokens: ``Authorization: Bearer <token>``, or
for browsers' websockets a ``?token=`` query parameter. Unset means open, as
in the original design. Tokens are compared in constant time and never logged.
No Flask here (the websocket server uses it too); ``web.protect`` applies it to the APIs.
"""

from __future__ import annotations

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
