"""Per-client rate limits, counted in Redis: messages published, and failed token checks on every service.

``RATE_LIMIT`` (e.g. ``100/second``) is how many *messages* one client may
publish per period, over ``POST /dummy`` and ``POST /dummy/batch`` together:
a batch of 40 costs 40. A client is its signed token's ``sub``, or its
static token (so clients behind one address do not share a budget), or
its address when no token is needed (``relay.auth.Grant.client``).

``AUTH_FAILURE_LIMIT`` (default ``20/minute``) is how many failed token
checks one address may make per period, over every service together: the
ingestion API, the list API and the websocket server's handshake share one
counter per address, so guessing cannot triple its budget by switching
services; past it the answer is 429 with ``Retry-After`` instead of 401.
It is a budget of its own, not a share of ``RATE_LIMIT``: protection
against token guessing must not depend on an optional publishing limit (an
operator with tokens and no ``RATE_LIMIT`` had none at all on any service),
nor may a guesser's failures eat the messages of clients behind its address.
A valid token always passes, even from an address over its budget (a client
behind a guesser's NAT is not locked out). The websocket server imports this
module too (no Flask here) and runs :meth:`RateLimit.charge` in a thread.

Built on the ``limits`` package (the engine under Flask-Limiter) used
directly: Flask-Limiter decides per request before the view runs, so it can
neither charge a batch by its size nor share one budget between views and
the token check. Counters live in Redis (moving window), so the limit holds
across processes and hosts. If Redis does not answer, requests are let
through: the queue write then answers 503 anyway.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from relay.settings import Settings

log = logging.getLogger(__name__)
# The name the IETF fields give the publishing budget (draft-ietf-httpapi-ratelimit-headers: a policy is named).
POLICY = "publish"
# The 429 message of a failed token check over AUTH_FAILURE_LIMIT, the same on every service.
TOO_MANY_FAILURES = "Too many failed token checks from this address; retry after Retry-After seconds."


@dataclass(frozen=True)
class Verdict:
    """The outcome of charging a client: allowed or not, with what the headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # Unix time when the window has room again
    retry_after: int  # whole seconds, at least 1 (meaningful when not allowed)
    reset_after: int = 0  # whole seconds until the window has room again (0: it has now)
    window: int = 0  # the period of the limit, in seconds

    def headers(self) -> dict[str, str]:
        """The response fields that report it: the IETF draft's structured fields, and the older ``X-RateLimit-*``.

        ``RateLimit-Policy`` is the budget (``q`` per ``w`` seconds) and
        ``RateLimit`` what is left of it (``r``) and the seconds until the
        window has room again (``t``), both as Structured Fields (RFC 9651)
        in the syntax of draft-ietf-httpapi-ratelimit-headers-11. ``X-RateLimit-Reset``
        is a Unix time, as clients written before the draft read it.
        """
        return {
            "RateLimit-Policy": f'"{POLICY}";q={self.limit};w={self.window}',
            "RateLimit": f'"{POLICY}";r={self.remaining};t={self.reset_after}',
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }


class RateLimit:
    """A moving-window budget of messages per client, kept in Redis."""

    def __init__(self, spec: str, redis_url: str, timeout: float) -> None:
        self.item = parse(spec)
        storage = storage_from_string(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.limiter = MovingWindowRateLimiter(storage)

    @property
    def amount(self) -> int:
        """Most messages one client may publish per period."""
        return self.item.amount

    @property
    def window(self) -> int:
        """The period of the limit, in seconds."""
        return self.item.get_expiry()

    def charge(self, client: str, cost: int = 1) -> Verdict | None:
        """Take ``cost`` from ``client``'s budget; None when Redis does not answer (let through)."""
        return self._verdict(client, cost)

    def peek(self, client: str) -> Verdict | None:
        """``client``'s budget as it stands, taking nothing; None when Redis does not answer."""
        return self._verdict(client, 0)

    def _verdict(self, client: str, cost: int) -> Verdict | None:
        try:
            allowed = self.limiter.hit(self.item, client, cost=cost) if cost else True
            stats = self.limiter.get_window_stats(self.item, client)
        except Exception:  # the storage's own errors vary by driver; never turn them into 500s
            log.warning("rate limit storage unavailable; letting the request through", exc_info=True)
            return None
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        return Verdict(
            allowed,
            self.item.amount,
            stats.remaining,
            math.ceil(stats.reset_time),
            max(1, reset_after),
            reset_after,
            self.window,
        )


def client_for_address(address: str | None) -> str:
    """The identity of an unauthenticated client: its address."""
    return f"address:{address or 'unknown'}"


def client_for_failed_auth(address: str | None) -> str:
    """The identity failed token checks are counted under: the address, apart from its publishing budget."""
    return "auth-failure:" + client_for_address(address)


def failed_auth_limit(settings: Settings, tokens_required: bool) -> RateLimit | None:
    """The failed-token budget of a service, or None when the limit is off or no token is needed.

    ``tokens_required`` is the service's ``Authenticator.required`` (relay/auth), which knows every kind of token.
    """
    if not (tokens_required and settings.auth_failure_limit):
        return None
    return RateLimit(settings.auth_failure_limit, settings.redis_url, settings.redis_timeout_seconds)


def forwarded_address(remote: str | None, forwarded_for: str | None, proxy_count: int) -> str | None:
    """The client's address behind ``proxy_count`` trusted proxies, as Werkzeug's ``ProxyFix`` reads it.

    The ``proxy_count``-th address from the right of ``X-Forwarded-For``;
    ``remote`` when there are no trusted proxies or the header has fewer hops.
    """
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    return hops[-proxy_count] if proxy_count and len(hops) >= proxy_count else remote
