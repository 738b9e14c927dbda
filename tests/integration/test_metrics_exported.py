"""Every metric the alert rules watch is one a running process exports: a
worker (its accounting and its `POST /events`) or a ledger. A renamed metric
would otherwise leave its alert silent for good. And each labelled counter
an alert takes `increase()` of is there at 0 before its first count."""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import produce_events
from tests.support.ledger_processes import LedgerDeployment
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def alert_metrics() -> set[str]:
    return {name for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
            for name in re.findall(r"\baccountant_[a-z_]+\b", rule["expr"])}


def samples(process: WorkerProcess) -> dict[str, float]:
    status, text = process.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return {f"{sample.name}{sorted(sample.labels.items())}": sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def names(process: WorkerProcess) -> set[str]:
    return {key.split("[", 1)[0] for key in samples(process)}


def test_the_alert_rules_watch_only_what_a_worker_or_a_ledger_exports(deployment: Deployment,
                                                                      deployment_ledger: LedgerDeployment) -> None:
    watched = alert_metrics()
    assert {"accountant_consumer_lag_records", "accountant_agent_stalled_seconds", "accountant_outputs_in_flight",
            "accountant_ingest_requests_total", "accountant_ingest_events_total",
            "accountant_ledger_lag_records", "accountant_ledger_closures_written_total"} <= watched, watched
    worker = deployment.worker().start().wait_ready()
    ledger = deployment_ledger.ledger().start().wait_ready()
    # Counted from 0 before anything happened: increase() sees the first count.
    before = samples(worker)
    assert before["accountant_ingest_requests_total[('status', '503')]"] == 0
    assert before["accountant_ingest_events_total[('outcome', 'refused')]"] == 0
    assert before["accountant_events_total[('reason', 'internal_error'), ('result', 'rejected'), "
                  "('type', 'round.completed')]"] == 0
    assert before["accountant_closures_total[('reason', 'ttl_expired')]"] == 0
    # Some series exist only once there is something to count: an event, a commit, a closure.
    produce_events(deployment.bootstrap, deployment.events_topic, session_events("s-metrics", [10]))

    def exported() -> set[str]:
        return names(worker) | names(ledger)

    wait_for("every metric an alert watches", lambda: watched <= exported(), timeout=60, interval=0.2,
             observed=lambda: f"missing: {sorted(watched - exported())}")
