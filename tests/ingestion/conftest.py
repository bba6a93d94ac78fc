"""Fixtures of the ingestion process: its app on a clean real Redis, a client, and that Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app(make_ingestion_app: Callable[..., Flask]) -> Flask:
    return make_ingestion_app(list_api_url="http://lists.example", max_message_bytes=4096)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    """A client of the Redis the app writes to, to see what it queued."""
    return redis.Redis.from_url(redis_url)
