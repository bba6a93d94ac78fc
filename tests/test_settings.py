"""Configuration: one place, documented, fail-fast in production."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest

from relay.settings import DEV_SECRET, ENV_VARS, Settings, load_settings, local_stack_env, uses_local_stack
from tests.helpers import ROOT


def test_defaults_load_in_development() -> None:
    settings = load_settings({})
    assert settings.max_message_bytes == 65536
    assert (settings.ingestion_api_port, settings.list_api_port, settings.ws_port) == (5000, 5001, 8765)
    assert not settings.is_production


def test_public_urls_follow_the_ports_unless_set() -> None:
    """scripts/run.sh sets only ports: the URLs the live page gets must be that stack's."""
    settings = load_settings({"INGESTION_API_PORT": "5300", "LIST_API_PORT": "5301", "WS_PORT": "8865"})
    assert settings.ingestion_api_url == "http://127.0.0.1:5300"
    assert settings.list_api_url == "http://127.0.0.1:5301"
    assert settings.ws_url == "ws://127.0.0.1:8865"
    assert load_settings({"WS_PORT": "8865", "WS_URL": "wss://example.org/live"}).ws_url == "wss://example.org/live"


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


def test_production_refuses_a_short_jwt_secret() -> None:
    env = {name: "x" for name, var in ENV_VARS.items() if var.required_in_production}
    env.update(APP_ENV="production", SECRET_KEY="a-real-secret", JWT_SECRET="too-short")
    with pytest.raises(ValueError, match="JWT_SECRET must be at least 32 bytes"):
        load_settings(env)
    env["JWT_SECRET"] = "x" * 32
    assert load_settings(env).jwt_secret == "x" * 32


def test_malformed_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MAX_MESSAGE_BYTES"):
        load_settings({"MAX_MESSAGE_BYTES": "lots"})


def test_the_settings_table_is_generated_from_the_fields_in_order() -> None:
    """`python -m relay.settings` prints the table the docs render, straight from the fields: no copy to keep equal."""
    command = [sys.executable, "-m", "relay.settings"]
    printed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = re.findall(r"^\| `([A-Z_]+)` \|", printed, flags=re.MULTILINE)
    assert names == [field.name.upper() for field in fields(Settings)]
    assert "| `SECRET_KEY` | `dev-only-insecure-secret` | yes | Signs pagination cursors" in printed
    assert "| `API_TOKENS` | (empty) |  |" in printed
    assert str(ROOT) not in printed, "the table shows this checkout's path"


def test_every_setting_is_parsed_to_its_declared_type() -> None:
    settings = load_settings({"API_TOKENS": "a, b,", "WS_PING_INTERVAL": "2.5"})
    hints = get_type_hints(Settings)
    for field in fields(Settings):
        declared = tuple if hints[field.name] == tuple[str, ...] else hints[field.name]
        assert type(getattr(settings, field.name)) is declared, field.name
    assert settings.api_tokens == ("a", "b")
    assert settings.ws_ping_interval == 2.5


def test_each_setting_with_choices_refuses_others_naming_the_variable() -> None:
    with_choices = {name: var for name, var in ENV_VARS.items() if var.choices}
    assert {"APP_ENV", "LOG_FORMAT", "WS_COMPRESSION", "WS_SLOW_CLIENT_POLICY"} <= with_choices.keys()
    for name, var in with_choices.items():
        with pytest.raises(ValueError, match=f"{name} must be one of {', '.join(var.choices)}"):
            load_settings({name: "nonsense"})
        if name != "APP_ENV":  # production needs more than one variable; tested above
            for choice in var.choices:
                assert getattr(load_settings({name: choice}), name.lower()) == choice


def test_local_stack_file_counts_only_while_its_stack_holds_the_lock(tmp_path: Path) -> None:
    """run.sh's settings file is read while locked (its stack runs); a stopped stack's file is ignored."""
    path = tmp_path / "local-stack.env"
    path.write_text(
        "# header\nLOCAL_STACK_PID=1\nREDIS_URL=redis://127.0.0.1:6390/0\nSQLALCHEMY_DATABASE_URI='sqlite:///a b.db'\n"
    )
    assert local_stack_env(path) == {}
    with path.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what run.sh's honcho holds
        found = local_stack_env(path)
    assert found == {
        "LOCAL_STACK_PID": "1",
        "REDIS_URL": "redis://127.0.0.1:6390/0",
        "SQLALCHEMY_DATABASE_URI": "sqlite:///a b.db",
    }
    assert local_stack_env(path) == {}
    assert local_stack_env(tmp_path / "absent.env") == {}


def test_only_a_developer_process_uses_the_local_stack() -> None:
    """Never under pytest (the suite runs beside a developer's stack) nor in production."""
    assert uses_local_stack({})
    assert not uses_local_stack({"PYTEST_CURRENT_TEST": "tests/test_x.py::test_y (call)"})
    assert not uses_local_stack({"APP_ENV": "production"})
