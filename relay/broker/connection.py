"""Redis clients for the request path: short timeouts, no silent retries."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def never_connected(exc: redis.RedisError) -> bool:
    """Tell whether ``exc`` is a failure to open a connection: then no command reached Redis.

    redis-py raises the same classes for failed connects and for failures on an
    open connection, and says which in the message ("Error 111 connecting to",
    "Timeout connecting to server").
    """
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and "connecting" in str(exc).lower()


def connect(url: str, timeout: float, read_timeout: float | None = None) -> redis.Redis:
    """Return a client that fails fast: short timeouts (``read_timeout`` for answers) and no silent retries."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout if read_timeout is None else read_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
