"""The alert rules, their promtool unit tests, the example Prometheus
configuration and the Grafana board: valid, each alert tested both ways,
each with its runbook entry, each board query valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.metrics import INGEST_OUTCOMES, INGEST_STATUSES
from app.rules import CloseReason, Reason, Result
from app.rules.events import EVENT_TYPES
from tests.support import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
BOARD = REPO / "deploy" / "grafana" / "usage-accountant.json"
RUNBOOK = REPO / "docs" / "operations.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package; scripts/setup installs it)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
            if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_example_prometheus_configuration() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == name]
        assert True in outcomes, f"{name}: no test where it fires"
        assert False in outcomes, f"{name}: no test where it stays quiet"


def test_every_alert_has_a_severity_and_a_runbook_entry() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", runbook, re.MULTILINE)}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
        anchor = rule["annotations"]["runbook"].removeprefix("docs/operations.md#")
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {RUNBOOK.name}"


def board_queries() -> list[tuple[str, str]]:
    board = json.loads(BOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def test_every_board_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no query checker; a recording rule per query makes it parse them."""
    grafana_variables = {"$__rate_interval": "1m", "$job": "usage-accountant",
                         "$ledger_job": "usage-accountant-ledger"}
    rules = []
    for number, (_, expr) in enumerate(board_queries()):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"board:query_{number}", "expr": expr})
    rule_file = tmp_path / "board.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "board", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_board_shows_every_metric_an_alert_watches() -> None:
    def metrics(text: str) -> set[str]:
        return set(re.findall(r"\baccountant_[a-z_]+", text))

    watched = metrics(ALERTS.read_text())
    shown = metrics(" ".join(expr for _, expr in board_queries()))
    assert watched <= shown, f"on no panel: {sorted(watched - shown)}"


def test_the_alert_tests_use_only_label_values_the_service_exports() -> None:
    """A test that feeds a reason no worker ever exports proves nothing about the alert."""
    known = {
        "reason": {reason.value for reason in Reason} | {reason.value for reason in CloseReason},
        "result": {result.value for result in Result},
        "type": {"", *EVENT_TYPES},
        "outcome": set(INGEST_OUTCOMES),
        "status": set(INGEST_STATUSES),
    }
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            for label, value in re.findall(r'(\w+)="([^"]*)"', series["series"]):
                assert value in known.get(label, {value}), f"{test['name']}: {label}={value!r} is never exported"
