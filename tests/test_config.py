"""Configuration: one place, documented, fail-fast in production."""

from __future__ import annotations

import re

import pytest

from config import DEV_SECRET, ENV_VARS, load_settings
from tests.helpers import ROOT


def test_defaults_load_in_development() -> None:
    settings = load_settings({})
    assert settings.max_message_bytes == 65536
    assert (settings.ingestion_api_port, settings.list_api_port, settings.ws_port) == (5000, 5001, 8765)
    assert not settings.is_production


def test_production_fails_fast_on_missing_required_settings() -> None:
    with pytest.raises(ValueError, match="SQLALCHEMY_DATABASE_URI"):
        load_settings({"APP_ENV": "production"})


def test_production_refuses_the_development_secret() -> None:
    env = {name: "x" for name, var in ENV_VARS.items() if var.required_in_production}
    env.update(APP_ENV="production", SECRET_KEY=DEV_SECRET)
    with pytest.raises(ValueError, match="SECRET_KEY"):
        load_settings(env)
    env["SECRET_KEY"] = "a-real-secret"
    assert load_settings(env).is_production


def test_malformed_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MAX_MESSAGE_BYTES"):
        load_settings({"MAX_MESSAGE_BYTES": "lots"})


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(ENV_VARS)
