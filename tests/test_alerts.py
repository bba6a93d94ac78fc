"""The shipped alert rules (deploy/prometheus-alerts.yml): valid, unit-tested by promtool, on real series.

``promtool test rules`` runs tests/prometheus/alerts.test.yml: input series
for each alert, where it must fire and where it must stay quiet. Without
promtool the tests are skipped locally and fail in CI (tests/conftest.py).
tests/system/test_prometheus.py loads the same rules into a real Prometheus
scraping a running stack.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS_FILE = ROOT / "deploy" / "prometheus-alerts.yml"
ALERTS_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"
ALERT_NAMES = {"QueueBacklogGrowing", "DeadLetters", "WorkerDown", "HighServerErrorRate", "StoredLatencyHigh"}
# PromQL words that look like metric names but are not: aggregations (before "by"), keywords, label names.
_NOT_METRICS = {
    "by",
    "without",
    "and",
    "or",
    "unless",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "le",
    "app",
    "job",
    "status",
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]


def rule_metric_names() -> set[str]:
    """The metric names the alert expressions query (histograms by their ``_bucket`` series)."""
    names = set()
    for rule in rules():
        expr = re.sub(r'"[^"]*"', "", rule["expr"])  # label values
        expr = re.sub(r"\[[^]]*\]", "", expr)  # range selectors
        names |= {w for w in re.findall(r"\b[a-z_]+\b(?!\s*\()", expr) if w not in _NOT_METRICS}
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    from tests.system.test_prometheus import prometheus_binary

    return subprocess.run([prometheus_binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(ALERTS_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout


def test_every_alert_fires_and_stays_quiet_as_its_promtool_unit_tests_say() -> None:
    tested = promtool("test", "rules", str(ALERTS_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_issues_five_alerts_are_shipped_each_with_a_firing_and_a_quiet_unit_test() -> None:
    assert {rule["alert"] for rule in rules()} == ALERT_NAMES
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in rules())
    cases = [case for test in yaml.safe_load(ALERTS_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in ALERT_NAMES:
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == name]
        assert True in outcomes and False in outcomes, f"{name} needs a case where it fires and one where it does not"


def test_alert_expressions_query_only_series_the_services_export() -> None:
    from tests.system.test_prometheus import FAMILIES

    exported = set().union(*FAMILIES.values()) | {"up"}
    queried = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in rule_metric_names()}
    assert queried <= exported, queried - exported
    assert {"pending_records", "dead_letter_records", "message_stored_latency_seconds", "http_requests"} <= queried
