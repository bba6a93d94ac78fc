"""A real Prometheus (Debian's ``prometheus`` package) scraping every service of a running stack.

The services run as ``scripts/run.sh`` runs them: both APIs under gunicorn
with several workers, each service with its own ``PROMETHEUS_MULTIPROC_DIR``,
the Celery worker with ``WORKER_METRICS_PORT``, and a wsserver.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import RedisServer, Service, celery_worker, free_port, gunicorn, python_env, wait_http_ok, wait_until
from tests.stack import wsserver
from tests.test_alerts import ALERT_NAMES

pytestmark = pytest.mark.e2e

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what prometheus-client negotiates for text
OPENMETRICS = "application/openmetrics-text"
# What each service exports besides process_*: its own families and no other's.
FAMILIES = {
    "ingestion_api": {
        "http_requests",
        "http_request_duration_seconds",
        "messages_accepted",
        "messages_rejected",
        "live_publish_failures",
        "persist_queue_depth",
    },
    "list_api": {"http_requests", "http_request_duration_seconds"},
    "worker": {
        "persisted_messages",
        "persist_batch_records",
        "persist_retries",
        "dead_letters",
        "requeued_lost",
        "expired_messages_removed",
        "message_stored_latency_seconds",
        "pending_records",
        "dead_letter_records",
    },
    "wsserver": {
        "ws_connections",
        "ws_catching_up",
        "ws_frames_delivered",
        "ws_frames_dropped",
        "ws_frames_replayed",
        "ws_slow_disconnects",
        "ws_stream_gaps",
    },
}


def prometheus_binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool`` (skipped locally without them; a failure in CI)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


@dataclass
class Targets:
    """Each service's ``/metrics`` URL, by service name."""

    urls: dict[str, str]
    ingest_url: str


@pytest.fixture(scope="module")
def targets(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    """The stack as scripts/run.sh runs it, with a few messages through it so every family has samples."""
    from tests.helpers import clear_database

    clear_database(sqlite_url)
    base = tmp_path_factory.mktemp("prometheus-stack")
    log_dir = base / "logs"
    log_dir.mkdir()
    redis_server = RedisServer(base / "redis")  # its own: other tests flush the session's (started below)
    env = python_env({"REDIS_URL": redis_server.url, "SQLALCHEMY_DATABASE_URI": sqlite_url, "BIND_HOST": "127.0.0.1"})

    def own_dir(service: str) -> dict[str, str]:
        (base / service).mkdir()
        return {**env, "PROMETHEUS_MULTIPROC_DIR": str(base / service)}

    ingest_port, list_port, ws_port, worker_port = free_port(), free_port(), free_port(), free_port()
    services: list[Service] = [
        redis_server,
        gunicorn("ingestion_api", "ingestion_api", ingest_port, own_dir("ingestion_api"), log_dir, 2),
        gunicorn("list_api", "list_api", list_port, own_dir("list_api"), log_dir, 2),
        celery_worker("worker", {**own_dir("worker"), "WORKER_METRICS_PORT": str(worker_port)}, log_dir),
        wsserver(env, log_dir, ws_port),
    ]
    for service in services:
        service.start()
    try:
        urls = {
            "ingestion_api": f"http://127.0.0.1:{ingest_port}",
            "list_api": f"http://127.0.0.1:{list_port}",
            "worker": f"http://127.0.0.1:{worker_port}",
            "wsserver": f"http://127.0.0.1:{ws_port}",
        }
        for url in urls.values():
            wait_http_ok(f"{url}/healthz")
        ingest = urls["ingestion_api"]
        for i in range(5):
            assert requests.post(f"{ingest}/dummy", json={"i": i}, timeout=5).status_code == 202
        bad = requests.post(f"{ingest}/dummy", data=b"{", headers={"Content-Type": "application/json"}, timeout=5)
        assert bad.status_code == 400
        assert requests.get(f"{urls['list_api']}/messages", timeout=5).status_code == 200
        worker_metrics = f"{urls['worker']}/metrics"
        wait_until(lambda: "persisted_messages_total 5.0" in requests.get(worker_metrics, timeout=2).text)
        yield Targets({name: f"{url}/metrics" for name, url in urls.items()}, ingest)
    finally:
        for service in services:
            service.stop()
        for service in services:
            print(f"--- {service.name} log ---\n{service.log()[-3000:]}")


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.mark.parametrize("service", sorted(FAMILIES))
def test_each_service_exports_its_own_families_and_process_metrics(targets: Targets, service: str) -> None:
    response = requests.get(targets.urls[service], timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT_FORMAT, "exactly one charset parameter"
    names = families(response.text)
    assert {name for name in names if not name.startswith("process_")} == FAMILIES[service]
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_start_time_seconds"} <= names


@pytest.mark.parametrize("service", sorted(FAMILIES))
def test_each_service_serves_openmetrics_when_asked(targets: Targets, service: str) -> None:
    response = requests.get(targets.urls[service], headers={"Accept": OPENMETRICS}, timeout=5)
    assert response.headers["Content-Type"].startswith(OPENMETRICS + "; version=")
    assert response.headers["Content-Type"].count("charset") == 1
    assert response.text.endswith("# EOF\n")


@pytest.mark.parametrize("service", sorted(FAMILIES))
def test_promtool_finds_no_problem_in_any_endpoint(targets: Targets, service: str) -> None:
    promtool = prometheus_binary("promtool")
    text = requests.get(targets.urls[service], timeout=5).text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked


def test_a_real_prometheus_scrapes_every_service_cleanly(targets: Targets, tmp_path: Path) -> None:
    """Every target up with no scrape error, the worker's counters queryable, and the shipped alert rules
    evaluated without error on series that all exist (none quiet because it names a missing metric)."""
    from tests.test_alerts import ALERTS_FILE, rule_metric_names

    binary = prometheus_binary("prometheus")
    config = tmp_path / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['{url.split('/')[2]}']\n"
        for name, url in targets.urls.items()
    )
    shutil.copy(ALERTS_FILE, tmp_path / "alerts.yml")
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [alerts.yml]\nscrape_configs:\n{jobs}"
    )
    checked = subprocess.run([prometheus_binary("promtool"), "check", "config", str(config)], capture_output=True)
    assert checked.returncode == 0, checked
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    argv += [f"--web.listen-address=127.0.0.1:{port}"]
    server = Service("prometheus", argv, {"PATH": "/usr/bin:/bin"}, tmp_path).start()
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready")

        def all_up() -> bool:
            active = requests.get(f"{api}/targets", timeout=2).json()["data"]["activeTargets"]
            scraped = {t["labels"]["job"]: t for t in active if t["health"] == "up" and not t["lastError"]}
            return set(scraped) == set(targets.urls)

        wait_until(all_up, timeout=30, what="every target up with no scrape error")
        # Counters arrive through OpenMetrics as name_total: query what a dashboard queries.
        query = requests.get(f"{api}/query", params={"query": "persisted_messages_total"}, timeout=5).json()
        assert [float(r["value"][1]) for r in query["data"]["result"]] == [5.0]
        query = requests.get(f"{api}/query", params={"query": "count(up == 1)"}, timeout=5).json()
        assert float(query["data"]["result"][0]["value"][1]) == len(targets.urls)
        for name in rule_metric_names():
            found = requests.get(f"{api}/query", params={"query": f"count({name})"}, timeout=5).json()
            assert found["data"]["result"], f"an alert rule queries {name}, which no service exports"

        def rules_evaluated() -> list[dict]:
            groups = requests.get(f"{api}/rules", timeout=2).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule["lastEvaluation"][:4] != "0001" for rule in rules) else []

        wait_until(rules_evaluated, timeout=30, what="every alert rule evaluated once")
        rules = rules_evaluated()
        assert {rule["name"] for rule in rules} == ALERT_NAMES
        assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), rules
        # A healthy stack with a few messages through it: nothing fires.
        assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []
    finally:
        server.stop()
        print(f"--- prometheus log ---\n{server.log()[-3000:]}", file=sys.stderr)


def test_worker_metrics_bind_bind_host_and_healthz_follows_redis(
    sqlite_url: str, tmp_path: Path, log_dir: Path
) -> None:
    """The worker's port listens on BIND_HOST only; /healthz is 503 until the consumer runs, then 200 while Redis
    answers, 503 after (a readiness check: compose's health check uses it)."""
    redis_server = RedisServer(tmp_path / "redis").start()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = python_env(
        {
            "REDIS_URL": redis_server.url,
            "SQLALCHEMY_DATABASE_URI": sqlite_url,
            "WORKER_METRICS_PORT": str(port),
            "BIND_HOST": "127.0.0.2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    worker = celery_worker("worker-bind", env, log_dir, mingle=True).start()
    answers: list[dict] = []

    def consuming() -> bool:
        answers.append(requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5).json())
        return answers[-1] == {"status": "ok"}

    try:
        # The port opens at worker_init; the consumer starts after mingle's second of listening for neighbours.
        wait_until(consuming, timeout=30, what="the worker's /healthz to say it consumes")
        assert answers[0].get("error") == "not_consuming", answers[:3]
        healthy = requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5)
        assert healthy.json() == {"status": "ok"} and healthy.headers["Content-Type"] == "application/json"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        redis_server.stop()
        wait_until(lambda: requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5).status_code == 503)
        assert requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5).json()["error"] == "redis_unavailable"
    finally:
        worker.stop()
        redis_server.stop()


# --- the compose stack's monitoring (checked without Docker) -----------------------------------


def test_shipped_scrape_config_targets_every_replica_of_every_service_directly() -> None:
    """deploy/prometheus.yml is valid and resolves each compose service to all its replicas, on its port."""
    from tests.system.test_compose import ENV, ROOT, SERVICES

    config_path = ROOT / "deploy" / "prometheus.yml"
    checked = subprocess.run([prometheus_binary("promtool"), "check", "config", str(config_path)], capture_output=True)
    assert checked.returncode == 0, checked
    ports = {"ingestion_api": "INGESTION_API_PORT", "list_api": "LIST_API_PORT", "wsserver": "WS_PORT"}
    ports = {name: int(ENV[setting]) for name, setting in ports.items()} | {"worker": int(ENV["WORKER_METRICS_PORT"])}
    jobs = {}
    for job in yaml.safe_load(config_path.read_text())["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        assert sd["type"] == "A", "an A query answers with every replica's address"
        jobs[job["job_name"]] = (sd["names"], sd["port"])
    assert jobs == {name: ([name], port) for name, port in ports.items()}
    assert all(name in SERVICES for name in jobs)
    assert SERVICES["prometheus"]["volumes"][0].startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")


def test_compose_prometheus_loads_the_shipped_alert_rules() -> None:
    """The rules file deploy/prometheus.yml names is mounted beside it in the monitoring profile."""
    from tests.system.test_compose import ROOT, SERVICES

    (rule_file,) = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["rule_files"]
    assert (ROOT / "deploy" / rule_file).is_file()
    assert f"./deploy/{rule_file}:/etc/prometheus/{rule_file}:ro" in SERVICES["prometheus"]["volumes"]
    assert SERVICES["prometheus"]["profiles"] == ["monitoring"]


def test_grafana_dashboard_queries_only_families_the_services_export() -> None:
    from tests.system.test_compose import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [re.sub(r"\$\w+", "", target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    # Metric names: words with an underscore that are not functions (followed by "(").
    words = {word for e in exprs for word in re.findall(r"\b[a-z]+_[a-z_]+\b(?!\s*\()", e)}
    used = {re.sub(r"_(total|bucket|count|sum)$", "", word) for word in words}
    assert used <= set().union(*FAMILIES.values()), used
    assert {"http_request_duration_seconds", "persisted_messages", "persist_queue_depth", "dead_letters"} <= used
    # The series the alerts watch have panels too.
    assert {"message_stored_latency_seconds", "pending_records", "dead_letter_records", "http_requests"} <= used
    assert any("method" in e for e in exprs), "requests are shown by method (a preflight is not a publish)"
