"""Per-client rate limits for publishing, counted in messages, shared across endpoints and processes.

``RATE_LIMIT`` (e.g. ``100/second``) is how many *messages* one client may
publish per period, over ``POST /dummy`` and ``POST /dummy/batch`` together:
a batch of 40 costs 40. A client is its bearer token when ``API_TOKENS`` is
set (so clients behind one address do not share a budget), otherwise its
address. A failed authentication costs its address one message, so
guessing tokens is throttled as hard as publishing.

Built on the ``limits`` package (the engine under Flask-Limiter) used
directly: Flask-Limiter decides per request before the view runs, so it can
neither charge a batch by its size nor share one budget between views and
the token check. Counters live in Redis (moving window), so the limit holds
across processes and hosts. If Redis does not answer, requests are let
through: the queue write then answers 503 anyway.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The outcome of charging a client: allowed or not, with what the headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # Unix time when the window has room again
    retry_after: int  # whole seconds, at least 1 (meaningful when not allowed)


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

    def charge(self, client: str, cost: int = 1) -> Verdict | None:
        """Take ``cost`` from ``client``'s budget; None when Redis does not answer (let through)."""
        try:
            allowed = self.limiter.hit(self.item, client, cost=cost)
            stats = self.limiter.get_window_stats(self.item, client)
        except Exception:  # the storage's own errors vary by driver; never turn them into 500s
            log.warning("rate limit storage unavailable; letting the request through", exc_info=True)
            return None
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        return Verdict(allowed, self.item.amount, stats.remaining, math.ceil(stats.reset_time), retry_after)


def client_for_token(token: str) -> str:
    """The rate-limit and idempotency identity of a bearer token (a digest: tokens are never stored)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def client_for_address(address: str | None) -> str:
    """The identity of an unauthenticated client: its address."""
    return f"address:{address or 'unknown'}"
