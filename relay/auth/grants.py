"""Grants: what the holder of a token may do, per channel, and how a token becomes one.

Two kinds of token, both optional and both usable at once:

* ``API_TOKENS``: static keys for services, each a full grant (every
  capability on every channel), as before signed tokens existed.
* Signed tokens (JWT, PyJWT): ``JWT_SECRET`` accepts HS256, ``JWT_PUBLIC_KEY``
  (PEM) accepts RS256 with an RSA key or ES256 with an EC key, so the
  issuing backend keeps the private key. ``exp`` and ``sub`` are required,
  ``nbf`` is honoured, ``aud`` and ``iss`` are checked when ``JWT_AUDIENCE`` /
  ``JWT_ISSUER`` are set. The algorithm a token names picks the key: HS256
  only ever meets the secret and RS256/ES256 only the public key, so a token
  signed with the public key as an HMAC secret ("algorithm confusion") or
  with ``alg: none`` is refused.

A signed token's ``channels`` claim maps a pattern to capabilities::

    {"sub": "user-42", "exp": 1767225600,
     "channels": {"orders.42": ["subscribe", "history"], "chat.*": ["publish"]}}

A pattern is a channel name, a prefix ending in ``*`` (``chat.*``: every
channel starting ``chat.``), or ``*`` alone: every channel. A capability is
``publish`` (POST), ``subscribe`` (the websocket) or ``history`` (the
listings and ``GET /messages/<id>``). Reading or following *all* channels
at once (``GET /messages``, a websocket without ``?channel=``) needs ``*``.
With no token configured at all, everything is open (:data:`OPEN`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from relay.auth.tokens import client_for_token, token_ok
from relay.records import CHANNEL_PATTERN
from relay.settings import Settings

CAPABILITIES = ("publish", "subscribe", "history")
_ACTIONS = {"publish": "publish to", "subscribe": "subscribe to", "history": "read the history of"}
EVERY_CHANNEL = "*"
CHANNEL_PATTERN_OR_PREFIX = re.compile(rf"\*|{CHANNEL_PATTERN}|[A-Za-z0-9_.:-]{{1,63}}\*")
_HMAC_ALGORITHMS = ("HS256",)


class AuthError(Exception):
    """A request the token does not allow: ``status``, ``code`` and ``message`` for the JSON error."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthorized(AuthError):
    """No valid token: missing, malformed, badly signed, not yet valid or expired (``token_expired``)."""

    status = 401


class MissingToken(Unauthorized):
    """No token presented at all (RFC 6750: the challenge then carries no error code)."""


REALM = 'Bearer realm="messages"'


def challenge(refused: Unauthorized) -> str:
    """The ``WWW-Authenticate`` of a 401, as RFC 6750 asks: an error code only when a token was presented."""
    return REALM if isinstance(refused, MissingToken) else f'{REALM}, error="invalid_token"'


class Forbidden(AuthError):
    """A valid token without the capability the request needs on its channel."""

    status = 403

    def __init__(self, capability: str, channel: str | None) -> None:
        where = f"the channel {channel!r}" if channel is not None else "every channel (pattern '*')"
        super().__init__("forbidden", f"This token may not {_ACTIONS.get(capability, capability)} {where}.")
        self.capability = capability
        self.channel = channel


def pattern_matches(pattern: str, channel: str | None) -> bool:
    """Tell whether ``pattern`` covers ``channel``; ``channel`` None means all channels at once (``*`` alone)."""
    if pattern == EVERY_CHANNEL:
        return True
    if channel is None:
        return False
    if pattern.endswith("*"):
        return channel.startswith(pattern[:-1])
    return channel == pattern


@dataclass(frozen=True)
class Grant:
    """What one token allows: capabilities per channel pattern, for whom, until when.

    ``subject`` is the signed token's ``sub`` (None for a static token or an
    open deployment): it goes on the access line, never the token.
    ``client`` is the identity rate limits and Idempotency-Keys count under
    (None: the client's address). ``expires_at`` is a Unix time, or None.
    """

    patterns: tuple[tuple[str, frozenset[str]], ...]
    subject: str | None = None
    client: str | None = None
    expires_at: float | None = None

    def can(self, capability: str, channel: str | None) -> bool:
        """Tell whether this grant allows ``capability`` on ``channel`` (None: on all channels at once)."""
        return any(capability in caps and pattern_matches(p, channel) for p, caps in self.patterns)

    def require(self, capability: str, channel: str | None) -> None:
        """Raise :class:`Forbidden` unless this grant allows ``capability`` on ``channel``."""
        if not self.can(capability, channel):
            raise Forbidden(capability, channel)

    def patterns_for(self, capability: str) -> list[str]:
        """The patterns under which this grant allows ``capability`` (to filter a listing of channels)."""
        return [pattern for pattern, caps in self.patterns if capability in caps]


FULL = ((EVERY_CHANNEL, frozenset(CAPABILITIES)),)
OPEN = Grant(FULL)  # no token configured: everything is allowed, as in the original design


class Authenticator:
    """Turns a presented token into a :class:`Grant` (see the module docstring for the rules)."""

    def __init__(
        self,
        api_tokens: tuple[str, ...] = (),
        jwt_secret: str = "",
        jwt_public_key: str = "",
        jwt_audience: str = "",
        jwt_issuer: str = "",
    ) -> None:
        self.api_tokens = api_tokens
        self.keys: dict[str, Any] = {alg: jwt_secret for alg in _HMAC_ALGORITHMS} if jwt_secret else {}
        if jwt_public_key:
            key = load_pem_public_key(jwt_public_key.replace("\\n", "\n").encode())
            if isinstance(key, rsa.RSAPublicKey):
                self.keys["RS256"] = key
            elif isinstance(key, ec.EllipticCurvePublicKey):
                self.keys["ES256"] = key
            else:
                raise ValueError("JWT_PUBLIC_KEY must be an RSA (RS256) or EC (ES256) public key in PEM")
        self.audience = jwt_audience or None
        self.issuer = jwt_issuer or None

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The authenticator ``settings`` describe (``API_TOKENS``, ``JWT_*``)."""
        return cls(
            settings.api_tokens,
            settings.jwt_secret,
            settings.jwt_public_key,
            settings.jwt_audience,
            settings.jwt_issuer,
        )

    @property
    def required(self) -> bool:
        """Whether a token is needed at all (any static token or signing key configured)."""
        return bool(self.api_tokens or self.keys)

    def authenticate(self, token: str | None) -> Grant:
        """Return the grant of ``token``, or raise :class:`Unauthorized`; :data:`OPEN` when no token is needed."""
        if not self.required:
            return OPEN
        if token is None:
            raise MissingToken("unauthorized", "A bearer token is required.")
        if self.api_tokens and token_ok(token, self.api_tokens):
            return Grant(FULL, client=client_for_token(token))
        if not self.keys or token.count(".") != 2:
            raise Unauthorized("unauthorized", "The token is not valid.")
        return self._grant(self._claims(token))

    def _claims(self, token: str) -> Mapping[str, Any]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key = self.keys.get(algorithm) if isinstance(algorithm, str) else None
            if key is None:
                raise Unauthorized("unauthorized", f"The token's algorithm {algorithm!r} is not accepted here.")
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token_expired", "The token has expired; get a fresh one.") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("unauthorized", f"The token is not valid: {exc}.") from None

    @staticmethod
    def _grant(claims: Mapping[str, Any]) -> Grant:
        channels = claims.get("channels", {})
        if not isinstance(channels, dict):
            raise Unauthorized("unauthorized", "The token's 'channels' claim must be an object.")
        patterns = []
        for pattern, capabilities in channels.items():
            if not CHANNEL_PATTERN_OR_PREFIX.fullmatch(pattern):
                raise Unauthorized("unauthorized", f"The token's channel pattern {pattern!r} is not valid.")
            if not isinstance(capabilities, list) or not set(capabilities) <= set(CAPABILITIES):
                raise Unauthorized(
                    "unauthorized",
                    f"The token's capabilities for the channel pattern {pattern!r} must be a list among "
                    f"{', '.join(CAPABILITIES)}.",
                )
            patterns.append((pattern, frozenset(capabilities)))
        subject = str(claims["sub"])
        return Grant(tuple(patterns), subject=subject, client=f"sub:{subject}", expires_at=float(claims["exp"]))
