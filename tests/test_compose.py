"""The container stack, checked without Docker: docker-compose.yml, the Dockerfile, nginx, the helper scripts.

No Docker engine runs in CI, so these tests read the files the way compose,
the Docker builder and nginx would, and check them against the code: every
command names an entry point that exists, every setting is one ``config.py``
reads, the Procfile and compose run the same things, and the ports line up
from nginx to each service's health check. The two scripts the containers
run (``wait_for_db.py``, ``healthcheck.py``) are run for real.
"""

from __future__ import annotations

import ast
import http.server
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from config import ENV_VARS, load_settings
from tests.helpers import ROOT, free_port, python_env

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV: dict[str, Any] = COMPOSE["x-env"]
APP_IMAGE = SERVICES["migrate"]["image"]
# Services built from our image that keep running (migrate runs once).
APPS = sorted(name for name, service in SERVICES.items() if service.get("image") == APP_IMAGE and name != "migrate")
# Which setting holds the port each network-facing app listens on.
PORT_SETTING = {"ingestion_api": "INGESTION_API_PORT", "list_api": "LIST_API_PORT", "wsserver": "WS_PORT"}
HOST_VALUES = {"SECRET_KEY": "a-real-secret", "MYSQL_PASSWORD": "app-password", "MYSQL_ROOT_PASSWORD": "root-password"}
GUNICORN_APP = re.compile(r"(\w+):(\w+)\(\)")
INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class UnsetVariable(LookupError):
    """A ``${NAME:?message}`` reference with NAME unset: compose refuses to start."""


def interpolate(text: str, host: Mapping[str, str]) -> str:
    """Expand compose's ``$NAME``, ``${NAME:-default}`` and ``${NAME:?error}`` the way compose does."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        value = host.get(name)
        if operator and operator.endswith("-"):
            return value if value or (value is not None and operator == "-") else argument
        if operator and operator.endswith("?"):
            if not value:
                raise UnsetVariable(f"{name}: {argument}")
            return value
        return value or ""

    return INTERPOLATION.sub(expand, text)


def resolved_env(host: Mapping[str, str] = HOST_VALUES) -> dict[str, str]:
    """The shared environment block as the containers would see it."""
    return {name: interpolate(value, host) for name, value in ENV.items()}


def argv(command: str | list[Any]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(args: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``args`` (``--name value`` or ``--name=value``)."""
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def entry_point(args: list[str]) -> tuple[str, ...]:
    """Reduce a command line to what it runs, e.g. ``("gunicorn", "list_api:create_app()")``.

    Options that only tune a process (ports, workers, log level) are left
    out, so the Procfile and compose can differ in those and still agree here.
    """
    while args and re.fullmatch(r"\w+=\S*", args[0]):  # leading NAME=value assignments (Procfile)
        args = args[1:]
    if args[:2] == ["python", "scripts/keep_running.py"]:  # the Procfile's restart wrapper
        args = args[2:]
    program = Path(args[0]).name
    if program == "gunicorn":
        apps = [arg for arg in args[1:] if GUNICORN_APP.fullmatch(arg)]
        assert len(apps) == 1, f"expected one 'module:factory()' in {args}"
        return ("gunicorn", apps[0])
    if program == "celery":
        app = option(args, "-A", "--app")
        rest = args[args.index(app) + 1 :] if app in args else args[1:]
        subcommand = next(arg for arg in rest if not arg.startswith("-"))
        return ("celery", str(app), subcommand)
    if program == "flask":
        app = option(args, "--app")
        rest = args[args.index(app) + 1 :] if app in args else args[1:]
        return ("flask", str(app), *rest)
    if program.startswith("python"):
        script = args[1]
        if "--" in args:
            return ("python", script, *entry_point(args[args.index("--") + 1 :]))
        return ("python", script)
    raise AssertionError(f"unknown program in {args}")


def module_tree(module: str) -> ast.Module:
    path = ROOT / f"{module}.py"
    assert path.is_file(), f"{path.name} does not exist"
    return ast.parse(path.read_text())


def top_level_functions(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def assigned_calls(tree: ast.Module) -> dict[str, str]:
    """Module-level ``name = Callable(...)`` assignments, as {name: callable name}."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.func.id
    return found


def has_main_guard(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def assert_entry_point_exists(entry: tuple[str, ...]) -> None:
    """Fail unless the module, factory, Celery app or script that ``entry`` names is there."""
    program = entry[0]
    if program == "gunicorn":
        module, factory = GUNICORN_APP.fullmatch(entry[1]).groups()
        assert factory in top_level_functions(module_tree(module)), f"{module}.py defines no {factory}()"
    elif program == "celery":
        module, subcommand = entry[1], entry[2]
        assert assigned_calls(module_tree(module)).get("celery_app") == "Celery", f"{module}.py has no celery_app"
        assert subcommand == "worker"
    elif program == "flask":
        module = entry[1]
        assert "create_app" in top_level_functions(module_tree(module)), f"{module}.py defines no create_app()"
    elif program == "python":
        script = ROOT / entry[1]
        assert script.is_file(), f"{entry[1]} does not exist"
        assert has_main_guard(ast.parse(script.read_text())), f"{entry[1]} cannot be run as a script"
        if len(entry) > 2:
            assert_entry_point_exists(entry[2:])
    else:
        raise AssertionError(f"unknown entry point {entry}")


def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = shlex.split(command)
    return commands


def compose_command(name: str) -> list[str]:
    return argv(SERVICES[name]["command"])


def listen_port(name: str) -> int:
    """The port an app binds, from its command (gunicorn) or its settings (wsserver)."""
    args = compose_command(name)
    if entry_point(args)[0] == "gunicorn":
        host, port = option(args, "--bind", "-b").rsplit(":", 1)
        assert host == "0.0.0.0", f"{name} binds {host}; other containers could not reach it"
        return int(port)
    env = resolved_env()
    assert env["BIND_HOST"] == "0.0.0.0", "the wsserver and worker metrics must bind every interface in a container"
    return int(env["WS_PORT"])


# --- entry points ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if s.get("image") == APP_IMAGE))
def test_every_app_command_names_an_entry_point_that_exists(name: str) -> None:
    assert_entry_point_exists(entry_point(compose_command(name)))


def test_every_script_a_service_runs_exists() -> None:
    """Commands and health checks may name scripts/*.py; each must be in the repo (and in the image)."""
    scripts = set(re.findall(r"scripts/[\w.]+\.py", COMPOSE_TEXT + (ROOT / "Dockerfile").read_text()))
    assert scripts >= {"scripts/wait_for_db.py", "scripts/healthcheck.py"}
    for script in scripts:
        assert (ROOT / script).is_file(), f"{script} does not exist"


def test_procfile_and_compose_run_the_same_entry_points() -> None:
    local = procfile()
    shared = set(local) - {"redis"}  # locally the bundled redis-server; compose runs the redis image
    assert shared, "the Procfile lists no services"
    assert shared <= set(SERVICES), f"compose lacks {shared - set(SERVICES)}"
    assert shared == set(APPS), f"compose runs {set(APPS) - shared} that the Procfile does not"
    for name in shared:
        assert entry_point(local[name]) == entry_point(compose_command(name)), name


def run_sh_exports() -> dict[str, str]:
    """Variables scripts/run.sh exports with a literal value (no expansion)."""
    exports = {}
    for line in (ROOT / "scripts" / "run.sh").read_text().splitlines():
        if line.startswith("export "):
            for word in shlex.split(line)[1:]:
                name, _, value = word.partition("=")
                if "$" not in value:
                    exports[name] = value
    return exports


def test_compose_passes_every_option_the_procfile_passes() -> None:
    """Same flags, and the same values wherever the local run fixes one (e.g. the access log format)."""
    local, exports = procfile(), run_sh_exports()
    for name in set(local) & set(APPS):
        local_args, compose_args = local[name], compose_command(name)
        for flag in (arg for arg in local_args if arg.startswith("-") and arg != "-"):
            assert flag in compose_args, f"{name}: the Procfile passes {flag}, compose does not"
            value = option(local_args, flag)
            if value is not None and value.startswith("$"):
                value = exports.get(value.strip("${}"))
            if value is not None and "$" not in value and flag not in ("--bind", "-b"):
                assert option(compose_args, flag) == value, f"{name}: {flag} differs from the local run"


def test_metrics_directory_is_a_fresh_tmpfs_in_every_python_container() -> None:
    directory = ENV["PROMETHEUS_MULTIPROC_DIR"]
    for name, service in SERVICES.items():
        if service.get("image") == APP_IMAGE:
            assert directory in service.get("tmpfs", []), f"{name} has no tmpfs at {directory}"
            probe = " ".join(service.get("healthcheck", {}).get("test", []))
            if "celery" in probe:  # imports tasks.py, whose metrics would write a file per probe
                assert "-u PROMETHEUS_MULTIPROC_DIR" in probe, f"{name}'s health check litters {directory}"


def test_migrate_waits_for_the_database_then_only_upgrades() -> None:
    command = compose_command("migrate")
    assert entry_point(command) == ("python", "scripts/wait_for_db.py", "flask", "db", "db", "upgrade")
    joined = " ".join(command)
    assert "db init" not in joined and "db migrate" not in joined
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    local = [shlex.split(line) for line in run_sh.splitlines() if line.startswith("flask ")]
    assert [entry_point(args) for args in local] == [entry_point(command)[2:]], "run.sh migrates differently"
    assert SERVICES["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"


def test_worker_consumes_the_queue_the_api_fills() -> None:
    assert option(compose_command("worker"), "-Q", "--queues") == resolved_env()["PERSIST_QUEUE"]


# --- settings -------------------------------------------------------------------------------


def test_every_python_service_takes_the_one_shared_environment() -> None:
    for name, service in SERVICES.items():
        if service.get("image") == APP_IMAGE:
            assert service["environment"] == ENV, f"{name} does not use x-env"
            assert "env_file" not in service, name


def test_shared_environment_sets_only_settings_config_reads() -> None:
    unknown = set(ENV) - set(ENV_VARS)
    assert not unknown, f"x-env sets {sorted(unknown)}, which config.ENV_VARS does not define"


def test_shared_environment_sets_every_setting_explicitly() -> None:
    """STYLE.md: the compose stack sets every value; a new setting in config.py must be added to x-env."""
    missing = [name for name in ENV_VARS if name not in ENV]
    assert not missing, f"add {missing} to x-env in docker-compose.yml"
    required = [name for name, var in ENV_VARS.items() if var.required_in_production]
    assert required and set(required) <= set(ENV)


def test_shared_environment_values_are_strings() -> None:
    """YAML reads bare off/yes/on as booleans; a setting must reach the container as the text it says."""
    for name, value in ENV.items():
        assert isinstance(value, str), f"{name}: {value!r} is not a string; quote it"


def test_shared_environment_loads_as_production_settings() -> None:
    env = resolved_env()
    assert env["APP_ENV"] == "production"
    settings = load_settings(env)
    assert settings.is_production
    assert make_url(settings.sqlalchemy_database_uri).host in SERVICES
    assert make_url(settings.redis_url).host in SERVICES


def test_required_secrets_fail_fast_when_unset() -> None:
    assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", ENV["SECRET_KEY"])
    for name in HOST_VALUES:
        host = {k: v for k, v in HOST_VALUES.items() if k != name}
        with pytest.raises(UnsetVariable, match=name):
            interpolate(COMPOSE_TEXT, host)
        with pytest.raises(UnsetVariable, match=name):
            interpolate(COMPOSE_TEXT, {**host, name: ""})
    interpolate(COMPOSE_TEXT, HOST_VALUES)


def test_apps_can_log_in_to_mysql_8() -> None:
    """MySQL 8 logs users in with caching_sha2_password: PyMySQL needs TLS for it, or `cryptography`."""
    url = make_url(resolved_env()["SQLALCHEMY_DATABASE_URI"])
    _, kwargs = sa.create_engine(url).dialect.create_connect_args(url)
    requirements = (ROOT / "requirements.txt").read_text().lower()
    has_rsa = "cryptography==" in requirements or "pymysql[rsa]" in requirements
    assert "ssl" in kwargs or has_rsa, "add ssl_* to the database URL, or cryptography to requirements.txt"
    assert kwargs["charset"] == "utf8mb4"


def test_database_credentials_match_between_db_and_apps() -> None:
    url = make_url(resolved_env()["SQLALCHEMY_DATABASE_URI"])
    db_env = {name: interpolate(value, HOST_VALUES) for name, value in SERVICES["db"]["environment"].items()}
    assert (url.username, url.password, url.database) == (
        db_env["MYSQL_USER"],
        db_env["MYSQL_PASSWORD"],
        db_env["MYSQL_DATABASE"],
    )


# --- persistence, dependencies, scaling ------------------------------------------------------


def test_redis_runs_with_the_seed_persistence_settings() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--appendfsync") == "everysec"
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_database_is_mysql_8_with_a_volume() -> None:
    db = SERVICES["db"]
    assert db["image"] == "mysql:8"
    assert any(volume.endswith(":/var/lib/mysql") for volume in db["volumes"])
    named = {volume.split(":")[0] for name in ("redis", "db") for volume in SERVICES[name]["volumes"]}
    assert named <= set(COMPOSE["volumes"])


def test_apps_wait_for_migrations_and_redis() -> None:
    assert set(APPS) >= {"ingestion_api", "list_api", "worker", "wsserver"}
    for name in APPS:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_long_running_services_have_health_checks_and_restart_policies() -> None:
    for name, service in SERVICES.items():
        if name == "migrate":
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_each_app_health_check_hits_its_own_port() -> None:
    for name, setting in PORT_SETTING.items():
        port = listen_port(name)
        assert port == int(resolved_env()[setting]), f"{name} listens on {port}, {setting} says otherwise"
        test = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test, name


def test_nothing_prevents_scaling() -> None:
    """Fixed names or host ports would make `docker compose up --scale` fail; only the proxy publishes."""
    for name, service in SERVICES.items():
        assert "container_name" not in service, name
        if name not in ("nginx", "prometheus"):  # the proxy, and the one monitoring server (never scaled)
            assert "ports" not in service, f"{name} publishes a port; route it through nginx"


# --- the proxy --------------------------------------------------------------------------------


def parse_nginx(text: str) -> list[tuple[list[str], list]]:
    """Parse nginx.conf into [(directive words, children)], children [] for simple directives."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))

    def block(position: int) -> tuple[list, int]:
        entries, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                entries.append((words, []))
                words = []
            elif token == "{":
                children, position = block(position)
                entries.append((words, children))
                words = []
            elif token == "}":
                return entries, position
            else:
                words.append(token.strip('"'))
        return entries, position

    return block(0)[0]


def directives(entries: list, name: str) -> list[tuple[list[str], list]]:
    return [(words[1:], children) for words, children in entries if words and words[0] == name]


@pytest.fixture(scope="module")
def nginx() -> dict[str, Any]:
    mounts = [volume.split(":") for volume in SERVICES["nginx"]["volumes"]]
    source = next(host for host, target, *_ in mounts if target == "/etc/nginx/nginx.conf")
    http = directives(parse_nginx((ROOT / source).read_text()), "http")[0][1]
    servers = {}
    for _, server in directives(http, "server"):
        port = int(directives(server, "listen")[0][0][0])
        locations = directives(server, "location")
        servers[port] = {
            args[-1]: proxy[0][0][0] for args, body in locations if (proxy := directives(body, "proxy_pass"))
        }
    upstreams = {args[0]: body for args, body in directives(http, "upstream")}
    maps = {tuple(args): {words[0]: words[1] for words, _ in body} for args, body in directives(http, "map")}
    return {"http": http, "servers": servers, "upstreams": upstreams, "maps": maps}


def test_nginx_routes_each_path_to_its_service(nginx: dict[str, Any]) -> None:
    single_origin = nginx["servers"][80]
    assert single_origin["/dummy"] == "http://ingestion_api"
    assert single_origin["/messages"] == "http://list_api"
    root = single_origin["/"]
    assert root.startswith("http://$")
    by_upgrade = nginx["maps"][("$http_upgrade", root.removeprefix("http://"))]
    assert by_upgrade["default"] == "list_api"
    assert [upstream for key, upstream in by_upgrade.items() if "websocket" in key] == ["wsserver"]
    for name, setting in PORT_SETTING.items():
        port = int(resolved_env()[setting])
        assert nginx["servers"][port]["/"] == f"http://{name}", f"nginx port {port} does not front {name}"


def test_nginx_upstreams_follow_the_scaled_services(nginx: dict[str, Any]) -> None:
    """Upstreams are re-resolved through Docker's DNS, so every replica gets traffic."""
    assert directives(nginx["http"], "resolver")[0][0][0] == "127.0.0.11"
    assert set(nginx["upstreams"]) == set(PORT_SETTING)
    for name, body in nginx["upstreams"].items():
        (address, *flags), *_ = [args for args, _ in directives(body, "server")]
        assert address == f"{name}:{listen_port(name)}", f"upstream {name} points at {address}"
        assert "resolve" in flags and directives(body, "zone"), f"upstream {name} is resolved only at start"


def test_nginx_passes_websocket_upgrades_and_accepts_full_batches(nginx: dict[str, Any]) -> None:
    headers = {args[0]: args[1] for args, _ in directives(nginx["http"], "proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$connection_upgrade"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert resolved_env()["PROXY_COUNT"] == "1", "the APIs must trust exactly nginx's X-Forwarded-For"
    assert directives(nginx["http"], "proxy_http_version")[0][0] == ["1.1"]
    size = directives(nginx["http"], "client_max_body_size")[0][0][0]
    limit = int(size.rstrip("kKmM")) * {"k": 1024, "m": 1024**2}.get(size[-1].lower(), 1)
    env = resolved_env()
    assert limit > max(int(env["MAX_BATCH_BYTES"]), int(env["MAX_MESSAGE_BYTES"])), "nginx would answer 413 first"
    published = {int(port.split(":")[-1]) for port in SERVICES["nginx"]["ports"]}
    assert published >= {80, *(int(env[setting]) for setting in PORT_SETTING.values())}


# --- the image --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_one_slim_image_with_runtime_dependencies_only() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    installs = [args for kind, args in instructions if kind == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs nothing"
    for args in installs:
        assert re.findall(r"-r\s+(\S+)", args) == ["requirements.txt"]
        words = args.split("pip install", 1)[1].split()
        assert [w for w in words if not w.startswith("-") and w != "requirements.txt"] == [], args
    assert "requirements-dev" not in (ROOT / "Dockerfile").read_text()
    requirements = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[\w.\-\[\],]+==[\w.]+", line) for line in requirements), "pin every requirement"


def test_dockerfile_runs_as_a_non_root_user_with_a_health_check() -> None:
    instructions = dockerfile()
    kinds = [kind for kind, _ in instructions]
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("CMD")
    health = [args for kind, args in instructions if kind == "HEALTHCHECK"]
    assert health and "CMD" in health[0] and "NONE" not in health[0]
    cmd = json.loads(dict(instructions)["CMD"])
    assert_entry_point_exists(entry_point(cmd))
    port = option(cmd, "--bind").rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}/healthz" in health[0], "the default health check probes another port"


def test_dockerignore_keeps_secrets_and_clutter_out_but_the_code_in() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert {".git", ".venv", "var"} <= set(patterns)
    needed = [p.name for p in ROOT.glob("*.py")] + ["index.html", "requirements.txt", "migrations/env.py"]
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
