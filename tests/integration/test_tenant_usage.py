"""Tenant usage, budgets and alerts (SPEC §9) end to end on the real broker, in both modes.

The oracle is the sessions the test published, summed by hand: a month's
usage is the tokens of the closures closed in it, plus the current month's
open sessions' tokens so far.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from app.rules import format_timestamp, parse_timestamp
from app.rules.usage import alert_id, period_of, reaches
from tests.support.clock import now_micros
from tests.support.deployment import Deployment
from tests.support.events import event, session_events
from tests.support.kafka import consume, consume_json, produce_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration


def request(worker: WorkerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(worker.url + path, data=data, method=method,
                                  headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def tokens(events: list[dict]) -> int:
    return sum(e.get("initial_token_count", 0) + e.get("delta_token_count", 0) for e in events)


def test_usage_equals_the_oracle_and_every_threshold_alerts_once(deployment: Deployment, guarantee: str) -> None:
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    worker = deployment.worker().start().wait_ready()
    # tenant-0 ends past its limit (800 tokens), tenant-1 under its lowest threshold (832).
    limits = {"tenant-0": 700, "tenant-1": 100_000}
    thresholds = [0.25, 0.5, 1.0]
    for tenant_id, limit in limits.items():
        status, stored = request(worker, "PUT", f"/tenants/{tenant_id}/budget",
                                 {"limit_tokens": limit, "thresholds": thresholds})
        assert status == 200 and stored["limit_tokens"] == limit, stored
    status, refused = request(worker, "PUT", "/tenants/tenant-0/budget", {"limit_tokens": 5, "thresholds": [0]})
    assert status == 400 and refused["parameter"] == "thresholds"

    published: dict[str, list[dict]] = {}
    events: list[dict] = []
    for number in range(24):
        tenant_id = f"tenant-{number % 3}"
        session = session_events(f"u-{number}", [number * 3, 7, 11], initial=40 + number, tenant_id=tenant_id,
                                 close=number % 2 == 0, ttl_secs=3600)
        published.setdefault(tenant_id, []).extend(session)
        events.extend(session)
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    # A gateway re-sending everything: duplicates, never counted again.
    produce_events(deployment.bootstrap, deployment.events_topic, events[::3])

    expected = {tenant_id: tokens(tenant_events) for tenant_id, tenant_events in published.items()}
    live = {tenant_id: sum(1 for e in tenant_events if e["type"] == "session.created")
            - sum(1 for e in tenant_events if e["type"] == "session.closed")
            for tenant_id, tenant_events in published.items()}

    def usages() -> dict[str, dict]:
        return {tenant_id: request(worker, "GET", f"/tenants/{tenant_id}/usage")[1] for tenant_id in expected}

    wait_for("tenant usage to reach the oracle's", lambda: all(
        usage["usage_tokens"] == expected[tenant_id] for tenant_id, usage in usages().items()), timeout=60,
        observed=usages)
    period = period_of(now_micros())
    for tenant_id, usage in usages().items():
        assert usage["period"] == period and usage["live_sessions"] == live[tenant_id]
        limit = limits.get(tenant_id)
        if limit is None:
            assert usage["budget"] is None and usage["state"] == "none" and usage["remaining_tokens"] is None
        else:
            assert usage["remaining_tokens"] == max(limit - expected[tenant_id], 0)
            assert usage["state"] == ("exceeded" if expected[tenant_id] >= limit
                                      else "warning" if reaches(expected[tenant_id], thresholds[0], limit) else "ok")
    assert [usages()[tenant_id]["state"] for tenant_id in sorted(limits)] == ["exceeded", "ok"]
    status, page = request(worker, "GET", "/tenants?limit=2")
    assert status == 200 and [t["tenant_id"] for t in page["tenants"]] == ["tenant-0", "tenant-1"]
    status, rest = request(worker, "GET", f"/tenants?cursor={page['next_cursor']}")
    assert [t["usage_tokens"] for t in rest["tenants"]] == [expected["tenant-2"]] and rest["next_cursor"] is None

    wanted = {alert_id(tenant_id, period, threshold) for tenant_id, limit in limits.items()
              for threshold in thresholds if reaches(expected[tenant_id], threshold, limit)}
    assert wanted, "the test must cross thresholds"
    alerts = consume_json(deployment.bootstrap, deployment.config.alerts_topic,
                          lambda got: wanted <= {a["alert_id"] for a in got}, timeout=30)
    ids = [alert["alert_id"] for alert in alerts]
    assert set(ids) == wanted and len(ids) == len(set(ids)), ids
    for alert in alerts:
        assert alert["type"] == "budget.threshold_crossed" and alert["period"] == period
        assert reaches(alert["usage_tokens"], alert["threshold"], alert["limit_tokens"])
        assert alert["usage_tokens"] <= expected[alert["tenant_id"]]

    status, _ = request(worker, "DELETE", "/tenants/tenant-0/budget")
    assert status == 204
    assert request(worker, "GET", "/tenants/tenant-0/budget")[0] == 404
    assert request(worker, "GET", "/tenants/tenant-0/usage")[1]["state"] == "none"
    # The topic is the source of truth: a tombstone now follows the budget.
    records = consume(deployment.bootstrap, deployment.config.budgets_topic,
                      lambda got: any(r.key == b"tenant-0" and r.value is None for r in got), timeout=10)
    assert [r.value is None for r in records if r.key == b"tenant-0"][-1]


def previous_month_end() -> datetime:
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start - timedelta(minutes=10)


def test_closures_of_the_previous_month_count_in_it_not_in_this_one(deployment: Deployment,
                                                                     guarantee: str) -> None:
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    worker = deployment.worker().start().wait_ready()
    late = previous_month_end()
    at = [format_timestamp(parse_timestamp((late + timedelta(seconds=s)).isoformat())) for s in range(4)]
    ttl = 40 * 24 * 3600  # still open by the clock when the events arrive
    old = [event("session.created", "old", 0, "acme", provider_id="p", model="m", ttl_secs=ttl, occurred_at=at[0]),
           event("session.activated", "old", 1, "acme", initial_token_count=500, occurred_at=at[1]),
           event("round.completed", "old", 2, "acme", round=1, delta_token_count=25, occurred_at=at[2]),
           event("session.closed", "old", 3, "acme", occurred_at=at[3])]
    # Opened last month and still open: carried into this month.
    carried = [event("session.created", "carried", 0, "acme", provider_id="p", model="m", ttl_secs=ttl,
                     occurred_at=at[0]),
               event("session.activated", "carried", 1, "acme", initial_token_count=70, occurred_at=at[1])]
    current = session_events("new", [5], initial=10, tenant_id="acme")
    produce_events(deployment.bootstrap, deployment.events_topic, old + carried + current)

    this_month = 70 + 15
    wait_for("acme's usage", lambda: request(worker, "GET", "/tenants/acme/usage")[1]["usage_tokens"] == this_month,
             timeout=60, observed=lambda: request(worker, "GET", "/tenants/acme/usage"))
    usage = request(worker, "GET", "/tenants/acme/usage")[1]
    assert usage["live_sessions"] == 1 and usage["live_token_count"] == 70
    assert usage["closures"] == {"closed": 1, "ttl_expired": 0}
    # The previous month's figure, as the tenant table's changelog holds it.
    changelog = deployment.config.tenant_changelog_topic
    states = consume(deployment.bootstrap, changelog,
                     lambda got: any(orjson.loads(r.value)["closed"].get(period_of(parse_timestamp(at[3])))
                                     for r in got), timeout=30)
    last = orjson.loads(states[-1].value)
    assert last["closed"][period_of(parse_timestamp(at[3]))] == [525, 1, 0]
    assert last["closed"][usage["period"]] == [15, 1, 0] and last["open_tokens"] == 70
