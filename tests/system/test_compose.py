"""What running the compose stack cannot show: checks of docker-compose.yml, the Dockerfile and the scripts.

``tests/system/test_compose_stack.py`` runs ``docker-compose.yml`` for real (entry
points, health checks, start-up order, nginx routing, scaling, restarts,
secrets). What is left here is what a run passes either way: that the
Procfile, compose and the Dockerfile start every service through
``relay/serve.py`` (its command lines are written there only), that compose
sets every setting ``relay/settings.py`` reads (a missing one would silently take its
default), that the image installs runtime requirements only and leaves
secrets out, that the database login suits MySQL 8 (the run uses MariaDB),
and the two scripts the containers run (``wait_for_db.py``,
``healthcheck.py``), run for real.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from relay.settings import ENV_VARS
from tests.helpers import ROOT, free_port, python_env

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV: dict[str, Any] = COMPOSE["x-env"]
APP_IMAGE = SERVICES["migrate"]["image"]
# Services built from our image that keep running (migrate runs once).
APPS = sorted(name for name, service in SERVICES.items() if service.get("image") == APP_IMAGE and name != "migrate")


def argv(command: str | list[Any]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name value`` or ``--name=value``)."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = shlex.split(command)
    return commands


def compose_command(name: str) -> list[str]:
    return argv(SERVICES[name]["command"])


SERVE = ["python", "-m", "relay.serve"]


def served(args: list[str]) -> str | None:
    """The process ``args`` starts through ``python -m relay.serve`` (the one place for command lines), if any."""
    while args and re.fullmatch(r"\w+=\S*", args[0]):  # leading NAME=value assignments (Procfile)
        args = args[1:]
    if args[:2] == ["python", "scripts/keep_running.py"]:  # the Procfile's restart wrapper
        args = args[2:]
    if args[:2] == ["python", "scripts/wait_for_db.py"] and "--" in args:  # compose's migrate waits first
        args = args[args.index("--") + 1 :]
    return args[3] if args[:3] == SERVE and len(args) == 4 else None


# --- every launcher runs relay.serve: each command line is written once, in relay/serve.py ------


def test_procfile_compose_and_dockerfile_start_every_service_through_relay_serve() -> None:
    local = procfile()
    shared = set(local) - {"redis"}  # locally the bundled redis-server; compose runs the redis image
    assert shared == set(APPS), f"the Procfile runs {sorted(shared)}, compose {APPS}"
    for name in shared:
        assert served(local[name]) == name, f"the Procfile starts {name} another way: {local[name]}"
        assert served(compose_command(name)) == name, f"compose starts {name} another way"
    assert served(compose_command("migrate")) == "migrate"
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    assert [served(shlex.split(line, comments=True)) for line in run_sh.splitlines() if "relay.serve" in line] == [
        "migrate"
    ], "run.sh must migrate through relay.serve"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert served(json.loads(dockerfile.split("\nCMD ", 1)[1].splitlines()[0])) == "list_api"


# --- settings: a missing one would silently take its default ------------------------------------


def test_every_python_service_takes_the_one_shared_environment() -> None:
    for name, service in SERVICES.items():
        if service.get("image") == APP_IMAGE:
            assert service["environment"] == ENV, f"{name} does not use x-env"
            assert "env_file" not in service, name


def test_shared_environment_sets_only_settings_config_reads() -> None:
    unknown = set(ENV) - set(ENV_VARS)
    assert not unknown, f"x-env sets {sorted(unknown)}, which config.ENV_VARS does not define"


def test_shared_environment_sets_every_setting_explicitly() -> None:
    """STYLE.md: the compose stack sets every value; a new setting in relay/settings.py must be added to x-env."""
    missing = [name for name in ENV_VARS if name not in ENV]
    assert not missing, f"add {missing} to x-env in docker-compose.yml"
    required = [name for name, var in ENV_VARS.items() if var.required_in_production]
    assert required and set(required) <= set(ENV)


def test_shared_environment_values_are_strings() -> None:
    """YAML reads bare off/yes/on as booleans; a setting must reach the container as the text it says."""
    for name, value in ENV.items():
        assert isinstance(value, str), f"{name}: {value!r} is not a string; quote it"


def test_apps_can_log_in_to_mysql_8() -> None:
    """MySQL 8 logs users in with caching_sha2_password: PyMySQL needs TLS for it, or `cryptography`.

    The compose test runs MariaDB in MySQL 8's place, whose login needs neither.
    """
    # Only the URL's shape matters here: every ${...} stands for some value.
    url = make_url(re.sub(r"\$\{[^}]*\}", "x", ENV["SQLALCHEMY_DATABASE_URI"]))
    _, kwargs = sa.create_engine(url).dialect.create_connect_args(url)
    requirements = (ROOT / "requirements.txt").read_text().lower()
    has_rsa = "cryptography==" in requirements or "pymysql[rsa]" in requirements
    assert "ssl" in kwargs or has_rsa, "add ssl_* to the database URL, or cryptography to requirements.txt"
    assert kwargs["charset"] == "utf8mb4"
    assert SERVICES["db"]["image"] == "mysql:8"


# --- what a run shows only when it goes wrong later ---------------------------------------------


def test_apps_wait_for_migrations_and_redis() -> None:
    """With the wrong order a run still ends healthy (restarts hide it), after a burst of errors."""
    assert set(APPS) >= {"ingestion_api", "list_api", "worker", "wsserver"}
    for name in APPS:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_long_running_services_restart_and_metrics_start_empty() -> None:
    """A crashed service comes back; its prometheus-client directory is a tmpfs, so it starts empty."""
    for name, service in SERVICES.items():
        if name != "migrate":
            assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        if service.get("image") == APP_IMAGE:
            assert ENV["PROMETHEUS_MULTIPROC_DIR"] in service.get("tmpfs", []), name


def test_redis_keeps_queued_messages_across_a_crash() -> None:
    """The run restarts Redis gracefully (which saves anyway); a crash keeps only what the AOF holds."""
    args = argv(SERVICES["redis"]["command"])
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])


def test_redis_high_water_mark_leaves_the_workers_room_to_drain() -> None:
    """Above REDIS_MEMORY_HIGH_WATER of the default maxmemory fit: the task messages of the header's
    four worker containers (WORKER_PREFETCH_BYTES per pool process), a reconciler round (1,000 records of
    at most PERSIST_MESSAGE_MAX_BYTES each) and a second of ingestion at 100 MB/s (docs/operations.md#redis-full)."""
    maxmemory = option(argv(SERVICES["redis"]["command"]), "--maxmemory")
    assert maxmemory == "${REDIS_MAXMEMORY:-2gb}", maxmemory
    room = (1 - float(ENV["REDIS_MEMORY_HIGH_WATER"])) * 2 * 1024**3
    concurrency = int(ENV["WORKER_CONCURRENCY"].removeprefix("${WORKER_CONCURRENCY:-").removesuffix("}"))
    workers = 4 * concurrency * int(ENV["WORKER_PREFETCH_BYTES"])
    reconciler = 1000 * int(ENV["PERSIST_MESSAGE_MAX_BYTES"])
    assert room >= workers + reconciler + 100 * 1024**2, (room, workers, reconciler)


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_installs_pinned_runtime_requirements_only() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    installs = [line for line in text.splitlines() if line.strip().startswith("RUN") and "pip install" in line]
    assert installs, "the Dockerfile installs nothing"
    for line in installs:
        assert re.findall(r"-r\s+(\S+)", line) == ["requirements.txt"]
        words = line.split("pip install", 1)[1].split()
        assert [w for w in words if not w.startswith("-") and w != "requirements.txt"] == [], line
    assert "requirements-dev" not in text
    requirements = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[\w.\-\[\],]+==[\w.]+", line) for line in requirements), "pin every requirement"


def test_dockerfile_default_command_runs_unprivileged_and_its_health_check_probes_it() -> None:
    """Compose gives every service its own command and health check, so the run never shows these two:
    they are what a plain ``docker run`` of the image gets."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = [line.strip().split(None, 1) for line in text.splitlines() if line.strip()[:1].isupper()]
    kinds = [kind for kind, _ in instructions]
    arguments = dict(instructions)
    assert arguments["USER"] not in ("root", "0") and kinds.index("USER") < kinds.index("CMD")
    assert served(json.loads(arguments["CMD"])) == "list_api"
    port = ENV_VARS["LIST_API_PORT"].default  # what relay.serve binds without compose's settings
    assert f"http://127.0.0.1:{port}/healthz" in arguments["HEALTHCHECK"], "the health check probes another port"
    assert "BIND_HOST=0.0.0.0" in arguments["ENV"].split(), "a plain docker run must listen beyond the container"


def test_dockerignore_keeps_secrets_and_clutter_out_but_the_code_in() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert {".git", ".venv", "var", ".env"} <= set(patterns)
    needed = [p.name for p in ROOT.glob("*.py")] + ["index.html", "requirements.txt", "migrations/env.py"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "relay").rglob("*.py")]
    needed += ["scripts/wait_for_db.py", "scripts/healthcheck.py"]
    for path in needed:
        assert (ROOT / path).exists(), path
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        assert not any(fnmatch(p, pattern) for p in prefixes for pattern in patterns), f"{path} would be left out"


# --- the scripts the containers run -------------------------------------------------------------


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=python_env({"APP_ENV": "development", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def test_wait_for_db_succeeds_on_a_real_database_then_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    env = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'messages.db'}"}
    code, output, _ = run_script(
        "scripts/wait_for_db.py", "--timeout", "10", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')", env=env
    )
    assert code == 0, output
    assert "database ready" in output
    assert marker.exists()


def test_wait_for_db_gives_up_on_an_unreachable_server_within_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    url = f"mysql+pymysql://app:secret@127.0.0.1:{free_port()}/messages"
    code, output, elapsed = run_script(
        "scripts/wait_for_db.py",
        "--url",
        url,
        "--timeout",
        "2",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
    )
    assert code != 0
    assert "not ready after 2s" in output
    assert 2 <= elapsed < 12
    assert not marker.exists(), "the command ran although the database never answered"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung database)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_wait_for_db_bounds_each_attempt_when_the_server_hangs(silent_server: int) -> None:
    url = f"mysql+pymysql://app:secret@127.0.0.1:{silent_server}/messages"
    code, output, elapsed = run_script("scripts/wait_for_db.py", "--url", url, "--timeout", "2")
    assert code != 0, output
    assert elapsed < 12, f"took {elapsed:.1f}s against a 2 s timeout"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_passes_on_200_and_fails_otherwise(health_server: int) -> None:
    base = f"http://127.0.0.1:{health_server}"
    assert run_script("scripts/healthcheck.py", f"{base}/healthz")[0] == 0
    assert run_script("scripts/healthcheck.py", f"{base}/unhealthy")[0] == 1
    assert run_script("scripts/healthcheck.py", f"http://127.0.0.1:{free_port()}/healthz")[0] == 1
