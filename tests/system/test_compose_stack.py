"""The compose stack run for real: ``docker-compose.yml`` as it is, on a private Docker engine.

``scripts/docker_engine.py`` starts a dockerd of our own (images cached in
``/var/lib/messages-compose`` between runs) and, since no registry is
reachable here, builds stand-ins for the upstream base images from Debian
packages. First ``docker compose`` (v2) brings the file up and serves 50
messages, and takes it down. Then, with ``docker-compose`` (v1, the design's
command) and through nginx's published ports only: ``up -d --build``, every
health check passing, messages posted, listed and received
on the websocket (``scripts/end_to_end.py``); the stack scaled out and
exercised again; a worker container killed under load and the Redis container
restarted under load, each counted (0 lost, 0 duplicated); ``down -v``. The
engine is stopped afterwards and the host's firewall and ``ip_forward`` are
checked to be as they were.

Needs root (dockerd) and Debian's packages, which it installs when missing;
skipped locally without root, a failure in CI. Run alone with
``pytest -n 0 -m compose -s`` to see the timings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.helpers import ROOT, free_port, python_env, wait_until
from tests.stack import walk_listing
from tests.system.test_faults import QUICK_REDELIVERY, WHERE_MESSAGES_WAIT, Load, ids_in, settle, tally

sys.path.insert(0, str(ROOT / "scripts"))
import docker_engine

# A cold first run builds the stand-in images and the app image (about 2 minutes here) in set-up.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

PROJECT = "messagestest"
# A killed worker's tasks come back after the visibility timeout: short, as in the other fault tests.
VISIBILITY_TIMEOUT = int(QUICK_REDELIVERY["CELERY_VISIBILITY_TIMEOUT"])
SCALE = {"worker": 3, "ingestion_api": 2, "wsserver": 2}
SCALE_ARGS = [arg for service, count in SCALE.items() for arg in ("--scale", f"{service}={count}")]
# Only these of the caller's environment reach compose: a developer's API_TOKENS, MYSQL_USER or
# WEB_WORKERS must not change what the test runs (nor a .env file: --env-file points at an empty one).
PASSED_THROUGH = ("PATH", "HOME", "LANG", "TMPDIR")


def timing(what: str, seconds: float) -> None:
    print(f"\nCOMPOSE {what}: {seconds:.1f} s", flush=True)


@dataclass
class Compose:
    """One compose project on the private engine, with the variables the stack needs.

    ``program`` is ``docker-compose`` (v1, the design's command) or ``docker compose`` (v2).
    """

    env: dict[str, str]
    http_port: int
    ingest_url: str
    list_url: str
    ws_url: str
    project: str = PROJECT
    program: tuple[str, ...] = ("docker-compose",)

    @classmethod
    def on(cls, engine: docker_engine.PrivateDockerd, **overrides: str) -> Compose:
        """A project published on free host ports, the public URLs set to match."""
        http_port, ingest_port, list_port, ws_port = (free_port() for _ in range(4))
        empty = engine.runtime / "empty.env"
        empty.touch()
        env = {
            **{name: os.environ[name] for name in PASSED_THROUGH if name in os.environ},
            "DOCKER_HOST": engine.env["DOCKER_HOST"],
            "COMPOSE_ENV_FILE": str(empty),
            "SECRET_KEY": "compose-test-secret-key",
            "MYSQL_PASSWORD": "compose-test-password",
            "MYSQL_ROOT_PASSWORD": "compose-test-root-password",
            "HTTP_PORT": str(http_port),
            "INGESTION_API_HOST_PORT": str(ingest_port),
            "LIST_API_HOST_PORT": str(list_port),
            "WS_HOST_PORT": str(ws_port),
            "INGESTION_API_URL": f"http://127.0.0.1:{ingest_port}",
            "LIST_API_URL": f"http://127.0.0.1:{list_port}",
            "WS_URL": f"ws://127.0.0.1:{ws_port}",
            **overrides,
        }
        return cls(env, http_port, env["INGESTION_API_URL"], env["LIST_API_URL"], env["WS_URL"])

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.program, "--env-file", self.env["COMPOSE_ENV_FILE"], "-p", self.project, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            command = " ".join([*self.program, *args])
            assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
        return result

    def docker(self, *args: str) -> str:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
        return result.stdout

    def redis(self, *commands: tuple[str, ...]) -> list[bytes]:
        """Each command's answer from the stack's Redis (not published to the host), as ``redis-cli --raw`` gives it."""
        container = self.containers("redis")[0]
        return [
            subprocess.run(
                ["docker", "exec", container, "redis-cli", "--raw", *command],
                env=self.env, capture_output=True, timeout=60, check=True,
            ).stdout
            for command in commands
        ]  # fmt: skip

    def containers(self, service: str | None = None, everything: bool = False) -> list[str]:
        """Names of the project's containers (running ones unless ``everything``), optionally of one service."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        listing = self.docker("ps", *(["-a"] if everything else []), *filters, "--format", "{{.Names}}")
        return sorted(listing.split())

    def health(self) -> dict[str, tuple[str, str]]:
        """Each container's service and state: its health status, else its run state and exit code."""
        names = self.containers(everything=True)
        if not names:
            return {}
        template = '{"service": {{json (index .Config.Labels "com.docker.compose.service")}}, "state": {{json .State}}}'
        lines = self.docker("inspect", "--format", template, *names).splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return {
            name: (
                item["service"],
                (item["state"].get("Health") or {}).get("Status")
                or f"{item['state']['Status']}:{item['state']['ExitCode']}",
            )
            for name, item in zip(names, found, strict=True)
        }

    def wait_healthy(self, timeout: float = 240) -> None:
        """Every long-running container healthy, the one-shot migrate exited 0."""

        def settled() -> bool:
            states = self.health()
            return bool(states) and all(
                status == "healthy" or (service == "migrate" and status == "exited:0")
                for service, status in states.values()
            )

        try:
            wait_until(settled, timeout=timeout, interval=1, what="every container healthy")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {self.health()}\n{self('logs', '--tail', '30', check=False).stdout}"
            ) from None

    def listed(self) -> list[dict]:
        return walk_listing(self.list_url)  # through nginx

    def end_to_end(self, count: int, base: str | None = None, channels: int = 0) -> str:
        """Run scripts/end_to_end.py through the published ports (or one origin ``base``); return its report."""
        urls = [base, base, base.replace("http", "ws", 1)] if base else [self.ingest_url, self.list_url, self.ws_url]
        result = subprocess.run(
            [
                sys.executable, "scripts/end_to_end.py", "--count", str(count), "--timeout", "60",
                "--ingest-url", urls[0], "--list-url", urls[1], "--ws-url", urls[2], "--channels", str(channels),
            ],
            cwd=ROOT, env=python_env({}), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, f"end_to_end.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout


@pytest.fixture(scope="module")
def engine() -> Iterator[docker_engine.PrivateDockerd]:
    """A private dockerd with the stand-in images; afterwards the host must be as it was."""
    if os.geteuid() != 0:
        pytest.skip("starting dockerd needs root (CI runs as root)")
    with docker_engine.private_engine_with_standins() as private:  # logs each image's build time
        yield private
    assert private.host_after == private.host_before, "dockerd left the host's firewall or forwarding changed"
    wait_until(lambda: not _engine_processes(private), timeout=15, what="dockerd, containerd and the shims to end")


def _engine_processes(engine: docker_engine.PrivateDockerd) -> list[str]:
    """Live processes of this engine: every one names its runtime folder (a zombie does not count)."""
    table = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in table.splitlines() if not line.startswith("Z") and str(engine.runtime) in line]


@pytest.fixture(scope="module")
def compose(engine: docker_engine.PrivateDockerd) -> Iterator[Compose]:
    """The project's compose stack, up and healthy; ``down -v`` afterwards leaves nothing of it."""
    stack = Compose.on(
        engine,
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        # The load below comes from one address: keep the per-client limit out of the count.
        RATE_LIMIT="100000/second",
    )
    assert stack("version", "--short").stdout.startswith("1."), "the design's docker-compose is v1"
    try:
        started = time.monotonic()
        stack("up", "-d", "--build")
        stack.wait_healthy()
        timing("docker-compose up -d --build until every container is healthy", time.monotonic() - started)
        yield stack
    finally:
        started = time.monotonic()
        stack("down", "-v", "--remove-orphans", check=False)
        timing("docker-compose down -v", time.monotonic() - started)
    assert_nothing_left(stack)


def assert_nothing_left(stack: Compose) -> None:
    assert stack.containers(everything=True) == []
    label = f"label=com.docker.compose.project={stack.project}"
    assert stack.docker("network", "ls", "-q", "--filter", label).split() == []
    assert stack.docker("volume", "ls", "-q", "--filter", label).split() == []


# First, before the module's v1 stack exists: one stack at a time on these two cores.
def test_compose_v2_runs_the_same_file(engine: docker_engine.PrivateDockerd) -> None:
    """``docker compose`` (v2, Debian trixie's) builds, starts and serves the same file, then removes it."""
    stack = Compose.on(engine, DOCKER_CONFIG=str(docker_engine.compose_v2_config()))
    stack.project, stack.program = f"{PROJECT}v2", ("docker", "compose")
    assert "version 2." in stack("version").stdout
    try:
        started = time.monotonic()
        stack("up", "-d", "--build", "--wait")
        timing("docker compose (v2) up -d --build --wait", time.monotonic() - started)
        report = stack.end_to_end(50)
        assert "missing=0 dup=0" in report and "websocket: received=50 missing=0" in report, report
    finally:
        stack("down", "-v", "--remove-orphans", check=False)
    assert_nothing_left(stack)


def test_messages_are_posted_listed_and_received_live_through_nginx(compose: Compose) -> None:
    report = compose.end_to_end(100)
    assert "missing=0 dup=0" in report and "websocket: received=100 missing=0" in report, report
    # The single origin on HTTP_PORT routes /dummy, /messages and websocket upgrades the same way.
    report = compose.end_to_end(20, base=f"http://127.0.0.1:{compose.http_port}")
    assert "websocket: received=20 missing=0" in report, report
    # /channels/<c>/messages is one path for both APIs there: nginx routes POST and GET apart.
    report = compose.end_to_end(30, base=f"http://127.0.0.1:{compose.http_port}", channels=3)
    assert report.count("posted=10 listed=10 missing=0 dup=0 foreign=0") == 3, report


def test_a_full_batch_passes_nginx_and_a_larger_one_gets_the_apps_json_413(compose: Compose) -> None:
    limit = int(compose("exec", "-T", "ingestion_api", "printenv", "MAX_BATCH_BYTES").stdout)
    count = int(compose("exec", "-T", "ingestion_api", "printenv", "MAX_BATCH_MESSAGES").stdout)
    filler = "x" * (limit // count - 100)
    batch = [{"n": n, "filler": filler} for n in range(count)]
    answer = requests.post(f"{compose.ingest_url}/dummy/batch", json=batch, timeout=60)
    assert answer.status_code == 202, answer.text[:500]
    ids = set(answer.json()["ids"])
    assert len(ids) == count
    wait_until(lambda: ids <= {m["id"] for m in compose.listed()}, timeout=60, what="the full batch to be stored")
    too_large = requests.post(f"{compose.ingest_url}/dummy/batch", json=[*batch, {"filler": filler * 20}], timeout=60)
    assert too_large.status_code == 413 and too_large.json()["error"] == "too_large", too_large.text[:300]


def test_services_run_as_the_unprivileged_user_and_redis_as_configured(compose: Compose) -> None:
    for service in ("ingestion_api", "list_api", "worker", "wsserver"):
        assert compose("exec", "-T", service, "id", "-u").stdout.strip() != "0", service
    expected = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    for name, value in expected.items():
        assert compose("exec", "-T", "redis", "redis-cli", "CONFIG", "GET", name).stdout.split() == [name, value]


def test_compose_refuses_to_start_without_each_secret(compose: Compose) -> None:
    for secret in ("SECRET_KEY", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD"):
        without = dataclasses.replace(compose, env={k: v for k, v in compose.env.items() if k != secret})
        result = without("config", "-q", check=False)
        assert result.returncode != 0 and f"set {secret}" in result.stderr, (secret, result.stderr)


def test_the_page_and_its_settings_are_served_through_nginx(compose: Compose) -> None:
    page = requests.get(f"{compose.list_url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    # The page learns where to post and connect from the stack's settings, not from a rebuilt file.
    assert compose.ingest_url in page.text and compose.ws_url in page.text
    # /metrics is for Prometheus on the compose network only: nginx answers 404 on every published port.
    for base in (compose.ingest_url, compose.list_url, compose.ws_url.replace("ws", "http", 1)):
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 404, base
    assert requests.get(f"http://127.0.0.1:{compose.http_port}/metrics", timeout=10).status_code == 404


def test_scaled_out_stack_spreads_the_work_over_every_replica(compose: Compose) -> None:
    started = time.monotonic()
    compose("up", "-d", *SCALE_ARGS)
    compose.wait_healthy()
    timing("scale out until healthy", time.monotonic() - started)
    for service, count in SCALE.items():
        assert len(compose.containers(service)) == count, service
    # nginx re-resolves the service names every 10 s (deploy/nginx.conf); a new replica's first
    # health check is 10 s after it starts, so by now nginx sends it requests.
    report = compose.end_to_end(300)
    assert "missing=0 dup=0" in report and "websocket: received=300 missing=0" in report, report
    # Every replica of the ingestion API answered some requests and every worker stored some rows.
    for service, needle in (("ingestion_api", '"POST /dummy'), ("worker", "stored ")):
        for container in compose.containers(service):
            logs = subprocess.run(
                ["docker", "logs", container], env=compose.env, capture_output=True, text=True, timeout=60
            )
            assert needle in logs.stdout + logs.stderr, f"{container} did no work"


def count_under_fault(compose: Compose, name: str, fault) -> None:
    """Post under load, inject ``fault`` in the middle, then count acknowledged against stored."""
    already = {message["id"] for message in compose.listed()}
    load = Load(compose.ingest_url, clients=4, batch_every=5, batch_size=10)
    with load.running():
        wait_until(lambda: load.count() > 300, timeout=30, what="load to get going")
        fault()
        faulted = time.monotonic()
        at_fault = load.count()
        wait_until(lambda: load.count() > at_fault + 300, timeout=60, what="load to go on after the fault")
    # A killed worker's tasks come back after the visibility timeout; then every id must be listed.
    listed = settle(compose, load.accepted, timeout=VISIBILITY_TIMEOUT + 60)
    stored = [message_id for message_id in listed if message_id not in already]
    result = tally(name, load.accepted, stored, in_redis=lambda: ids_in(compose.redis(*WHERE_MESSAGES_WAIT)))
    settled = time.monotonic() - faulted
    print(f"COMPOSE {name}: answers {dict(load.statuses)}; listing settled {settled:.1f} s after the fault")
    if result.lost:  # what holds them up: task messages queued, records pending (not yet handled)
        counts = [("LLEN", "persist"), ("ZCARD", "persist:pending")]
        print("COMPOSE Redis:", dict(zip((" ".join(c) for c in counts), compose.redis(*counts), strict=True)))
    result.assert_exactly_once()


def test_worker_container_killed_under_load_loses_and_duplicates_nothing(compose: Compose) -> None:
    compose("up", "-d", *SCALE_ARGS)  # scaled out already, unless this test runs alone: others must take over
    compose.wait_healthy()
    victim = compose.containers("worker")[0]
    count_under_fault(compose, "worker container killed", lambda: compose.docker("kill", victim))
    # `docker kill` is a manual stop, so the restart policy leaves it down: compose brings it back.
    compose("up", "-d", *SCALE_ARGS)
    compose.wait_healthy()


def test_redis_container_restarted_under_load_loses_and_duplicates_nothing(compose: Compose) -> None:
    count_under_fault(compose, "redis container restarted", lambda: compose("restart", "redis"))
    compose.wait_healthy()
