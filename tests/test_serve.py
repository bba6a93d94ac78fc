"""relay/serve.py: each process's command line, built from the settings (the one place they are written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.serve import PROCESSES, command
from relay.settings import load_settings
from tests.helpers import ROOT


def test_each_command_line_takes_its_values_from_the_settings() -> None:
    settings = load_settings(
        {
            "BIND_HOST": "0.0.0.0", "INGESTION_API_PORT": "7100", "LIST_API_PORT": "7101", "WEB_WORKERS": "5",
            "FORWARDED_ALLOW_IPS": "*", "PERSIST_QUEUE": "q1", "WORKER_CONCURRENCY": "4", "WORKER_HOSTNAME": "w1@%h",
        }
    )  # fmt: skip
    python = [sys.executable, "-m"]
    assert command("ingestion_api", settings) == [
        *python, "gunicorn", "--bind", "0.0.0.0:7100", "--workers", "5", "--forwarded-allow-ips", "*",
        "ingestion_api:create_app()",
    ]  # fmt: skip
    assert command("list_api", settings)[-6:] == [
        "0.0.0.0:7101", "--workers", "5", "--forwarded-allow-ips", "*", "list_api:create_app()"
    ]  # fmt: skip
    assert command("worker", settings) == [
        *python, "celery", "-A", "tasks", "worker", "-Q", "q1", "--hostname", "w1@%h", "--concurrency", "4",
        "--loglevel", "INFO",
    ]  # fmt: skip
    assert command("wsserver", settings) == [sys.executable, "wsserver.py"]
    assert command("migrate", settings) == [*python, "flask", "--app", "db", "db", "upgrade"]
    assert set(PROCESSES) == {"ingestion_api", "list_api", "worker", "wsserver", "migrate"}
    with pytest.raises(ValueError, match="unknown process 'beat'"):
        command("beat", settings)


def test_an_unknown_process_or_a_bad_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    """From any directory: refused before anything starts, with one line saying why."""
    unknown = subprocess.run(
        [sys.executable, "-m", "relay.serve", "beat"], cwd=tmp_path, capture_output=True, text=True
    )
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("usage: python -m relay.serve {ingestion_api,list_api,worker,wsserver,migrate}")
    env = {"PATH": str(ROOT / ".venv" / "bin"), "PYTHONPATH": str(ROOT), "WEB_WORKERS": "many"}
    bad = subprocess.run(
        [sys.executable, "-m", "relay.serve", "list_api"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "relay.serve: WEB_WORKERS must be an integer, got 'many'"
