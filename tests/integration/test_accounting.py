"""The accountant end to end on the real broker: event in, record, closure or rejection out."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from app.rules import parse_timestamp
from tests.support.clock import now_rfc3339
from tests.support.deployment import Deployment
from tests.support.events import event, session_events
from tests.support.kafka import consume_json, latest_sessions, produce, produce_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def closures_by_session(values: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for closure in values:
        grouped.setdefault(closure["closure_id"], []).append(closure)
    return grouped


def wait_for_closures(deployment: Deployment, session_ids: set[str], timeout: float = 60) -> dict[str, list[dict]]:
    values = consume_json(deployment.bootstrap, deployment.closures_topic,
                          lambda got: session_ids <= {c["closure_id"] for c in got}, timeout)
    grouped = closures_by_session(values)
    missing = session_ids - set(grouped)
    assert not missing, f"no closure for {sorted(missing)}"
    return grouped


def test_a_worker_applies_an_event_and_writes_the_record(deployment: Deployment) -> None:
    worker = deployment.worker().start().wait_ready()
    created = event("session.created", "s-one", 0, provider_id="prov", model="model-x", ttl_secs=600)
    produce_events(deployment.bootstrap, deployment.events_topic, [created])

    table = latest_sessions(deployment.bootstrap, deployment.changelog_topic, lambda t: "s-one" in t)
    record = table["s-one"].record.to_json()
    assert record["session_id"] == "s-one" and record["provider_id"] == "prov" and record["closed_at"] is None
    assert record["created_at"] == created["occurred_at"]
    status, stats = worker.get("/stats")
    assert status == 200 and stats["applied"] == 1 and stats["live_sessions"] == 1


def test_closed_session_yields_one_exact_closure(deployment: Deployment) -> None:
    deployment.worker().start().wait_ready()
    events = session_events("s-closed", [10, 20, 30], initial=100)
    # A gateway re-sending round 2 and the close: duplicates, not counted again.
    events.insert(4, dict(events[3]))
    events.append(dict(events[-1]))
    produce_events(deployment.bootstrap, deployment.events_topic, events)

    closures = wait_for_closures(deployment, {"s-closed"})["s-closed"]
    closure = closures[0]
    # Any repeat is the same closure: identical but for when it was published,
    # which is after the gateway closed the session.
    assert all({k: v for k, v in c.items() if k != "emitted_at"} == {k: v for k, v in closure.items()
                                                                     if k != "emitted_at"} for c in closures)
    assert all(parse_timestamp(c["emitted_at"]) >= parse_timestamp(events[-1]["occurred_at"]) for c in closures)
    assert closure["reason"] == "closed"
    assert closure["total_token_count"] == 160 and closure["missing_rounds"] == 0
    record = closure["record"]
    assert record["round_count"] == 3 and record["delta_token_count"] == 60 and record["initial_token_count"] == 100
    assert record["closed_at"] == events[-1]["occurred_at"]
    assert set(record) == {"session_id", "tenant_id", "provider_id", "model", "created_at", "activated_at",
                           "closed_at", "ttl_secs", "round_count", "initial_token_count", "delta_token_count",
                           "metadata"}


def test_idle_session_is_closed_by_ttl_within_grace_plus_two_seconds(deployment: Deployment) -> None:
    deployment.worker().start().wait_ready()
    events = session_events("s-idle", [5, 7], ttl_secs=3, close=False)
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    expires_at = parse_timestamp(events[0]["occurred_at"]) + 3_000_000

    closure = wait_for_closures(deployment, {"s-idle"}, timeout=30)["s-idle"][0]
    received = time.time_ns() // 1000
    grace = 1_000_000  # FAST_SETTINGS
    assert closure["reason"] == "ttl_expired"
    assert parse_timestamp(closure["record"]["closed_at"]) == expires_at
    assert closure["total_token_count"] == 112
    assert received - (expires_at + grace) <= 2_000_000, "TTL closure later than grace + 2 s"


# (session id, events, expected rejection reason of the last event)
def _rejection_cases() -> list[tuple[str, list[dict], str]]:
    def created(sid: str, **extra) -> dict:
        return event("session.created", sid, 0, provider_id="prov", model="model-x", ttl_secs=600, **extra)

    def activated(sid: str) -> dict:
        return event("session.activated", sid, 1, initial_token_count=10)

    def round_(sid: str, n: int, delta: int = 5, **extra) -> dict:
        return event("round.completed", sid, 10 + n, round=n, delta_token_count=delta, **extra)

    return [
        ("r-unknown", [round_("r-unknown", 1)], "unknown_session"),
        ("r-exists", [created("r-exists"), created("r-exists", metadata={"other": 1})], "session_exists"),
        ("r-transition", [created("r-transition"), round_("r-transition", 1)], "invalid_transition"),
        ("r-model", [created("r-model"), activated("r-model"), round_("r-model", 1, model="other")],
         "model_mismatch"),
        ("r-tenant", [created("r-tenant"), event("session.activated", "r-tenant", 1, "tenant-b",
                                                  initial_token_count=1)], "tenant_mismatch"),
        ("r-skew", [created("r-skew"), event("session.closed", "r-skew", 2, occurred_at=now_rfc3339(601))],
         "clock_skew"),
        ("r-late", [event("session.created", "r-late", 0, provider_id="p", model="m", ttl_secs=1,
                          occurred_at=now_rfc3339(-30)),
                    event("session.activated", "r-late", 1, initial_token_count=1, occurred_at=now_rfc3339(-10))],
         "session_expired"),
        ("r-closed", [created("r-closed"), event("session.closed", "r-closed", 1),
                      event("session.extended", "r-closed", 2, ttl_secs=900)], "session_closed"),
        ("r-overflow", [created("r-overflow"),
                        event("session.activated", "r-overflow", 1, initial_token_count=2**63 - 10),
                        round_("r-overflow", 1, delta=100)], "overflow"),
        ("r-invalid", [event("session.created", "r-invalid", 0, provider_id="p", model="m", ttl_secs=0)],
         "invalid_event"),
    ]


def test_every_rejection_reason_reaches_the_rejected_topic(deployment: Deployment) -> None:
    worker = deployment.worker().start().wait_ready()
    cases = _rejection_cases()
    for _, events, _ in cases:
        produce_events(deployment.bootstrap, deployment.events_topic, events)
    # Bytes that are no event, and a key that names another session.
    mismatched = event("session.closed", "r-key-body", 1)
    raw_records = [(b"r-garbage", b"\xff\xfe not json"),
                   (b"r-key", orjson.dumps(mismatched))]
    asyncio.run(produce(deployment.bootstrap, deployment.events_topic, raw_records))
    expected = {sid: reason for sid, _, reason in cases} | {"r-garbage": "invalid_event", "r-key": "key_mismatch"}

    def keyed(values: list[dict]) -> dict[str, dict]:
        out = {}
        for rejection in values:
            event_body = rejection["event"] or {}
            sid = event_body.get("session_id") if isinstance(event_body, dict) else None
            if rejection["reason"] == "key_mismatch":
                sid = "r-key"
            elif rejection["event"] is None:
                sid = "r-garbage"
            out[sid] = rejection
        return out

    values = consume_json(deployment.bootstrap, deployment.rejected_topic,
                          lambda got: set(expected) <= set(keyed(got)), timeout=60)
    got = keyed(values)
    assert {sid: got[sid]["reason"] for sid in expected if sid in got} == expected
    garbage = got["r-garbage"]
    assert garbage["event"] is None and garbage["raw"] and garbage["source"]["topic"] == deployment.events_topic
    assert "ttl_secs" in got["r-invalid"]["detail"] and "raw" not in got["r-invalid"]
    assert "model" in got["r-model"]["detail"] and "tenant_id" in got["r-tenant"]["detail"]
    # Only the last event of each case is rejected, and nothing else.
    # A batch's outcomes are counted once it is written, just after its rejections.
    def counted() -> dict[str, Any] | None:
        stats = worker.stats()
        return stats if stats["rejected_total"] >= len(expected) else None

    stats = wait_for("every rejection counted", counted, observed=worker.stats)
    assert {reason: n for reason, n in stats["rejected"].items() if n} == Counter(expected.values())
    assert stats["rejected_total"] == len(expected)


def test_a_transactional_gateway_is_accounted_in_full(deployment: Deployment) -> None:
    """A transaction's commit marker takes an input offset that no event comes
    back for. The agent steps over such holes after reading them; it used to
    ask Faust to fetch the hole again, forever, and accounted nothing after
    the first event."""
    worker = deployment.worker().start().wait_ready()
    deltas = {f"s-tx-{n}": [10 * n, 20, 30] for n in range(1, 4)}
    events = [e for session_id, rounds in deltas.items() for e in session_events(session_id, rounds, initial=100)]
    produce_events(deployment.bootstrap, deployment.events_topic, events,
                   transactional_id=f"{deployment.app_id}-gateway")

    closures = wait_for_closures(deployment, set(deltas))
    assert {session_id: closures[session_id][0]["total_token_count"] for session_id in deltas} == {
        session_id: 100 + sum(rounds) for session_id, rounds in deltas.items()}
    # A batch's outcomes are counted once it is written, just after its closures.
    wait_for("every event counted applied", lambda: worker.stats()["applied"] == len(events),
             observed=lambda: worker.stats())
