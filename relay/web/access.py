"""Who may call a view: the request's bearer token turned into a grant, and the 401/403 answers.

The Flask side of :mod:`relay.auth`, shared by both APIs. A view calls
:func:`authorize` with the capability it needs (:data:`PUBLISH` or
:data:`HISTORY`) and its channel (None: every channel at once), or
:func:`request_grant` when it filters by what the grant allows. A token that
does not authenticate is a 401 (``unauthorized`` or ``token_expired``) with
an RFC 6750 ``WWW-Authenticate`` challenge, charged to the address's
``AUTH_FAILURE_LIMIT`` (429 past it); a valid token without the capability
is a 403 ``forbidden`` and costs nothing. With no ``API_TOKENS`` and no JWT
key configured every request gets the open grant. The authenticator itself is
made from ``API_TOKENS`` and ``JWT_*`` by ``init_web`` (relay/web/base.py).
"""

from __future__ import annotations

from flask import current_app, g, request

from relay.auth import CAPABILITIES, REALM, Forbidden, Grant, Unauthorized, bearer, challenge
from relay.web.base import ApiError
from relay.web.ratelimit import TOO_MANY_FAILURES, client_for_failed_auth


def _capability(name: str) -> str:
    if name not in CAPABILITIES:
        raise ValueError(f"{name!r} is not one of relay.auth.CAPABILITIES")
    return name


# What the views need, named once: the document's operations say the same constants (relay/web/openapi.py).
PUBLISH = _capability("publish")
HISTORY = _capability("history")


def request_grant() -> Grant:
    """The grant of this request's bearer token, or raise 401 (429 past ``AUTH_FAILURE_LIMIT``)."""
    if "grant" in g:
        return g.grant
    header = request.headers.get("Authorization")
    try:
        grant = current_app.extensions["authenticator"].authenticate(bearer(header))
    except Unauthorized as exc:
        raise refused_token(exc) from None
    g.grant = grant
    if grant.subject is not None:
        g.subject = grant.subject  # on the access line (relay/web/base.py), never the token
    return grant


def authorize(capability: str, channel: str | None) -> Grant:
    """The request's grant if it allows ``capability`` on ``channel`` (None: every channel); else 401 or 403."""
    grant = request_grant()
    try:
        grant.require(capability, channel)
    except Forbidden as exc:
        scope = f'{REALM}, error="insufficient_scope", scope="{capability}"'
        raise ApiError(exc.status, exc.code, exc.message, {"WWW-Authenticate": scope}) from None
    return grant


def refused_token(exc: Unauthorized) -> ApiError:
    """The answer to a token that does not authenticate: 401, or 429 once the address is over ``AUTH_FAILURE_LIMIT``.

    Each refusal is charged to the address (``relay/web/ratelimit.py``); if
    Redis does not answer, the refusal is a plain 401. As RFC 6750 asks, the
    challenge carries ``error="invalid_token"`` only when a token was presented (``relay.auth.challenge``).
    """
    limit = current_app.extensions.get("auth_failure_limit")
    verdict = limit.charge(client_for_failed_auth(request.remote_addr)) if limit is not None else None
    if verdict is not None and not verdict.allowed:
        return ApiError(429, "too_many_requests", TOO_MANY_FAILURES, {"Retry-After": str(verdict.retry_after)})
    return ApiError(exc.status, exc.code, exc.message, {"WWW-Authenticate": challenge(exc)})
