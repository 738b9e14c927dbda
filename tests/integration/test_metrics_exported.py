"""Every worker metric the alert rules watch is one a running worker exports:
a renamed metric would otherwise leave its alert silent for good."""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO
from tests.support.deployment import Deployment
from tests.support.events import session_events
from tests.support.kafka import produce_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
#: The rule group of the workers (job usage-accountant); the ledger's rules
#: watch the ledger service's metrics.
WORKER_GROUP = "usage-accountant"


def worker_alert_metrics() -> set[str]:
    (group,) = [group for group in yaml.safe_load(ALERTS.read_text())["groups"] if group["name"] == WORKER_GROUP]
    return {name for rule in group["rules"] for name in re.findall(r"\baccountant_[a-z_]+\b", rule["expr"])}


def exported(worker: WorkerProcess) -> set[str]:
    status, text = worker.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_alert_rules_watch_only_what_a_worker_exports(deployment: Deployment) -> None:
    watched = worker_alert_metrics()
    assert {"accountant_consumer_lag_records", "accountant_agent_stalled_seconds",
            "accountant_outputs_in_flight"} <= watched, watched
    worker = deployment.worker().start().wait_ready()
    # Some series exist only once there is something to count: an event, a commit.
    produce_events(deployment.bootstrap, deployment.events_topic, session_events("s-metrics", [10]))
    wait_for("every metric an alert watches", lambda: watched <= exported(worker), timeout=60, interval=0.2,
             observed=lambda: f"missing: {sorted(watched - exported(worker))}")
