"""Fixtures of the live layer: websocket server processes on a real Redis, and a producer feeding them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relay.broker.producer import Producer
from tests.stack import WsServer


@pytest.fixture
def start_ws(redis_url: str, log_dir: Path) -> Iterator:
    servers: list[WsServer] = []

    def start(**settings: str) -> WsServer:
        server = WsServer(redis_url, log_dir, **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def publisher(redis_url: str) -> Producer:
    return Producer(redis.Redis.from_url(redis_url), "persist", "messages:live", 10_000, 60)
