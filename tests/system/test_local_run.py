"""``scripts/run.sh`` as a developer runs it: a killed service comes back, Ctrl-C leaves nothing running.

The run happens in a copy of the working tree (its own ``var/``: embedded
Redis, metrics files), on free ports with a temporary SQLite database, so it
never touches a stack running from the checkout. The copy's
``scripts/venv.sh`` only puts the existing ``.venv`` on ``PATH``: the test
must not install anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import ROOT, free_port, python_env, wait_http_ok, wait_until

pytestmark = pytest.mark.e2e

# Nor what another pytest worker may be writing meanwhile (.hypothesis, .pytest_cache).
NOT_COPIED = (
    ".git", ".venv", "var", "tests", "docs", "bench-results", "__pycache__", "*.pyc", ".ci", ".hypothesis",
    ".pytest_cache", ".ruff_cache",
)  # fmt: skip


@dataclass
class LocalRun:
    root: Path
    process: subprocess.Popen
    output: Path
    ingest_url: str
    list_url: str
    worker_metrics_port: str

    def service(self, needle: str) -> psutil.Process:
        """The one process a ``keep_running.py`` wrapper runs whose command line contains ``needle``."""
        found = [
            child
            for wrapper in psutil.Process(self.process.pid).children(recursive=True)
            if wrapper.cmdline()[1:2] == ["scripts/keep_running.py"]  # not the sh -c running it
            for child in wrapper.children()
            if needle in " ".join(child.cmdline())
        ]
        assert len(found) == 1, f"expected one {needle!r} under keep_running.py, found {found}"
        return found[0]

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def copy_of_the_tree(destination: Path) -> Path:
    """Copy what run.sh runs (not .venv, .git, var/), link the venv, and stub the installer."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (destination / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (destination / "scripts" / "venv.sh").write_text('export PATH="$PWD/.venv/bin:$PATH"\n')
    return destination


@contextlib.contextmanager
def local_run(tmp_path: Path) -> Iterator[LocalRun]:
    root = copy_of_the_tree(tmp_path / "tree")
    ports = {name: str(free_port()) for name in ("INGESTION_API_PORT", "LIST_API_PORT", "WS_PORT")}
    ports |= {"EMBEDDED_REDIS_PORT": str(free_port()), "WORKER_METRICS_PORT": str(free_port())}
    env = python_env(
        {
            **ports,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'messages.db'}",
            "WEB_WORKERS": "2",
            "WORKER_PROCESSES": "1",
        }
    )
    for name in ("REDIS_URL", "LIST_API_URL", "API_TOKENS", "RATE_LIMIT"):
        env.pop(name, None)
    output = tmp_path / "run.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    run = LocalRun(
        root,
        process,
        output,
        f"http://127.0.0.1:{ports['INGESTION_API_PORT']}",
        f"http://127.0.0.1:{ports['LIST_API_PORT']}",
        ports["WORKER_METRICS_PORT"],
    )
    try:
        wait_http_ok(f"{run.ingest_url}/healthz", timeout=90)
        wait_http_ok(f"{run.list_url}/healthz", timeout=30)
        yield run
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for leftover in processes_running_in(root):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        print(f"--- run.sh output ---\n{run.log()[-6000:]}")


def processes_running_in(root: Path) -> list[psutil.Process]:
    """Every process working in ``root`` or below (the whole stack, orphans included; redis is in var/redis)."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        cwd = Path(process.info["cwd"] or "/")
        if cwd == root or root in cwd.parents:
            found.append(process)
    return found


def stored_and_listed(run: LocalRun, payload: dict) -> None:
    response = requests.post(f"{run.ingest_url}/dummy", json=payload, timeout=5)
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]
    wait_until(
        lambda: requests.get(f"{run.list_url}/messages/{message_id}", timeout=2).json()["payload"] == payload,
        timeout=30,
        what=f"message {message_id} listed",
    )


def test_killed_services_restart_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    with local_run(tmp_path) as run:
        stored_and_listed(run, {"before": "kills"})
        worker, list_master = run.service("celery"), run.service("list_api:create_app()")
        worker.kill()
        list_master.kill()

        wait_until(lambda: run.service("celery").pid != worker.pid, timeout=30, what="a new worker")
        wait_until(lambda: run.service("list_api:create_app()").pid != list_master.pid, timeout=30, what="list API")
        wait_http_ok(f"{run.list_url}/healthz", timeout=30)
        stored_and_listed(run, {"after": "kills"})
        log = run.log()
        assert f"keep_running: relay.serve worker (pid {worker.pid}) was killed by SIGKILL" in log
        assert f"keep_running: relay.serve list_api (pid {list_master.pid}) was killed by SIGKILL" in log
        assert run.process.poll() is None, "honcho stopped"

        running = processes_running_in(run.root)
        assert len(running) >= 8, running  # redis, 2 x gunicorn with workers, celery with its pool, wsserver
        run.process.send_signal(signal.SIGINT)  # what Ctrl-C does: honcho is the terminal's foreground process
        run.process.wait(30)
        wait_until(lambda: not processes_running_in(run.root), timeout=15, what="every process gone")
        assert "restarting" not in run.log()[len(log) :], "a service was restarted while stopping"
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running)


def cli_env() -> dict[str, str]:
    """A developer's shell: nothing says where the stack is (not even pytest's markers, which turn it off)."""
    env = python_env({})
    for name in (
        "PYTEST_CURRENT_TEST",
        "PYTEST_VERSION",
        "INGESTION_API_URL",
        "LIST_API_URL",
        "WS_URL",
        "PERSIST_QUEUE",
    ):
        env.pop(name, None)
    return env


def run_in(root: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=root, env=env or cli_env(), capture_output=True, text=True, timeout=90, check=False
    )


def test_tools_find_the_running_stack_and_a_second_run_touches_nothing(tmp_path: Path) -> None:
    """Celery and the scripts use the stack run.sh started; a second run.sh refuses in one line, before rm -rf."""
    with local_run(tmp_path) as run:
        stored_and_listed(run, {"before": "second run"})
        marker = run.root / "var" / "metrics" / "ingestion_api" / "still-here"
        marker.write_text("the running stack's metrics")
        stack_env = dict(line.split("=", 1) for line in (run.root / "var" / "local-stack.env").read_text().splitlines()
                         if not line.startswith("#"))  # fmt: skip
        assert stack_env["LOCAL_STACK_PID"] == str(run.process.pid)
        assert stack_env["REDIS_URL"].startswith("redis://127.0.0.1:")
        assert stack_env["REDIS_URL"] != "redis://127.0.0.1:6379/0"
        ws_port = stack_env["WS_PORT"]
        assert {name: stack_env.get(name) for name in ("INGESTION_API_URL", "LIST_API_URL", "WS_URL")} == {
            "INGESTION_API_URL": run.ingest_url, "LIST_API_URL": run.list_url, "WS_URL": f"ws://127.0.0.1:{ws_port}",
        }  # fmt: skip
        assert stack_env["WORKER_METRICS_URL"] == f"http://127.0.0.1:{run.worker_metrics_port}"
        assert "WORKER_METRICS_PORT" not in stack_env, "a worker started by hand would take the stack's port"

        again = run_in(run.root, "bash", "scripts/run.sh", env=python_env({}))
        assert again.returncode == 1, again.stdout + again.stderr
        assert again.stderr.strip().splitlines() == [
            f"run.sh: scripts/run.sh is already running from this checkout (pid {run.process.pid}):"
            " stop it first (Ctrl-C)"
        ]
        elsewhere = copy_of_the_tree(tmp_path / "another-checkout")  # same ports, another directory
        ports = {name: stack_env[name] for name in ("INGESTION_API_PORT", "LIST_API_PORT", "WS_PORT")}
        clash = run_in(elsewhere, "bash", "scripts/run.sh", env=python_env(ports))
        assert clash.returncode == 1
        assert clash.stderr.strip().splitlines() == [
            f"run.sh: port {ports['INGESTION_API_PORT']} (INGESTION_API_PORT) is in use: another stack is running;"
            " stop it or set INGESTION_API_PORT"
        ]
        assert not (elsewhere / "var" / "metrics").exists()
        assert marker.read_text() == "the running stack's metrics"

        count = run_in(run.root, sys.executable, "scripts/dead_letters.py", "count")
        assert (count.returncode, count.stdout) == (0, "0\n"), count.stderr
        assert stack_env["REDIS_URL"] in run_in(run.root, sys.executable, "scripts/dead_letters.py", "--help").stdout
        ping = run_in(run.root, sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "10")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        assert f" worker.1@{socket.gethostname()}: OK" in ping.stdout, "the node is named for honcho's process"
        e2e = run_in(run.root, sys.executable, "scripts/end_to_end.py", "--count", "5", "--timeout", "30")
        assert e2e.returncode == 0, e2e.stdout + e2e.stderr
        assert "missing=0 dup=0" in e2e.stdout
        assert "\r" not in e2e.stdout, "piped, the progress is printed as whole lines"
        assert "listed 5/5" in e2e.stdout.splitlines()
        assert e2e.stdout.splitlines()[0].startswith("posted 5 messages in ")
        usage = " ".join(run_in(run.root, sys.executable, "scripts/end_to_end.py", "--help").stdout.split())
        assert f"(default: {run.ingest_url})" in usage  # argparse wraps the lines
        for name in ("INGESTION_API_URL", "LIST_API_URL", "WS_URL"):
            assert f"{name} of the stack scripts/run.sh is running (local-stack.env)" in usage, name
        assert "no scripts/run.sh stack is running" not in usage

        # A test module that builds an app at import (as tests/web/test_fuzz.py does) is collected before
        # pytest sets PYTEST_CURRENT_TEST: it must not find the stack either, or its apps differ from the tests'.
        module = tmp_path / "test_settings_at_import.py"
        module.write_text(
            "from relay.settings import load_settings\n"
            "AT_IMPORT = load_settings().list_api_url\n"
            "def test_same_settings_at_import_and_in_the_test():\n"
            f"    assert AT_IMPORT == load_settings().list_api_url != {run.list_url!r}\n"
        )
        pytest_run = run_in(run.root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module))
        assert pytest_run.returncode == 0, pytest_run.stdout[-3000:]

        run.process.send_signal(signal.SIGINT)
        run.process.wait(30)
        settings = "from relay.settings import load_settings; print(load_settings().redis_url)"
        after = run_in(run.root, sys.executable, "-c", settings)
        assert after.stdout.strip() == "redis://127.0.0.1:6379/0", "a stopped stack's settings were still used"
