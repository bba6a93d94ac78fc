"""Who may do what on which channel: static API tokens and signed tokens (JWT) with channel capabilities.

Shared by the two HTTP APIs and the websocket server, so no Flask here.
:class:`Authenticator` turns the token a request presents into a
:class:`Grant`, or raises :class:`Unauthorized`; a grant says whether its
holder may ``publish``, ``subscribe`` or read the ``history`` of a channel
(:meth:`Grant.require` raises :class:`Forbidden`). ``python -m relay.auth
mint`` makes a token for operators and tests (``relay/auth/__main__.py``).
"""

from relay.auth.grants import (
    CAPABILITIES,
    EVERY_CHANNEL,
    OPEN,
    REALM,
    Authenticator,
    AuthError,
    Forbidden,
    Grant,
    MissingToken,
    Unauthorized,
    challenge,
    pattern_matches,
)
from relay.auth.tokens import bearer, token_ok

__all__ = [
    "CAPABILITIES",
    "EVERY_CHANNEL",
    "OPEN",
    "REALM",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Grant",
    "MissingToken",
    "Unauthorized",
    "bearer",
    "challenge",
    "pattern_matches",
    "token_ok",
]
