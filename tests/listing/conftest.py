"""Fixtures of the listing process: its app on a clean real database (SQLite, then MariaDB), and a client."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app(make_list_app: Callable[..., Flask]) -> Flask:
    return make_list_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
