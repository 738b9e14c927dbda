"""Budgets for a simulated run, and the alerts the oracle expects of them
(SPEC §9): computed from the simulation's expected closures, never from the
service's outputs."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

from app.dev.simulator import Simulation
from app.rules.usage import alert_id, reaches
from tests.support.kafka import consume_json
from tests.support.workers import WorkerProcess

THRESHOLDS = [0.3, 0.6, 1.0, 1.2]


def month_tokens(simulation: Simulation) -> Counter[str]:
    """Each tenant's tokens once every session closed: the sum of its closures."""
    expected: Counter[str] = Counter()
    for closure in simulation.expected.closures.values():
        expected[closure.tenant_id] += closure.total_token_count
    return expected


def limits_under(expected: Counter[str]) -> dict[str, int]:
    """Limits a little under each tenant's month: 0.3, 0.6 and 1.0 are crossed, 1.2 is not."""
    return {tenant_id: max(total * 10 // 11, 1) for tenant_id, total in expected.items()}


def put_budget(worker: WorkerProcess, tenant_id: str, limit: int) -> None:
    body = json.dumps({"limit_tokens": limit, "thresholds": THRESHOLDS}).encode()
    request = urllib.request.Request(f"{worker.url}/tenants/{tenant_id}/budget", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def expected_alerts(expected: Counter[str], limits: dict[str, int], period: str) -> set[str]:
    wanted = {alert_id(tenant_id, period, threshold) for tenant_id, limit in limits.items()
              for threshold in THRESHOLDS if reaches(expected[tenant_id], threshold, limit)}
    assert wanted and not any(alert.endswith(":1.2") for alert in wanted)
    return wanted


def alerts_by_id(bootstrap: str, topic: str, wanted: set[str]) -> dict[str, list[dict]]:
    """Every alert on the topic (read_committed), by alert_id, once all wanted arrived."""
    alerts = consume_json(bootstrap, topic, lambda got: wanted <= {a["alert_id"] for a in got}, timeout=30)
    by_id: dict[str, list[dict]] = {}
    for alert in alerts:
        by_id.setdefault(alert["alert_id"], []).append(alert)
    return by_id
