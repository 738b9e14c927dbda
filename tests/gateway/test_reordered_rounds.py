"""End to end, against the real broker and a worker subprocess: gateways that
deliver rounds out of order (swapped, re-sent late after several, lost for
good), straight to Kafka through the publisher library or through the
worker's own `POST /events` with the API token on. Every closure is exactly
the oracle's (SPEC revision 2: a late round is applied once, `missing_rounds`
counts the numbers never delivered), and so are the rejections, the API's
refusals and the worker's counts."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.dev.oracle import check_refusals, format_report, verify_outputs
from app.dev.simulator import (
    Form,
    Simulation,
    SimulationConfig,
    Transport,
    collect_outputs,
    new_run_id,
    publish,
    publish_http,
)
from app.rules import Result
from tests.support.deployment import Deployment
from tests.support.kafka import consume
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN = "reorder-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def rounds_landing_late(records: list, gateway_rounds: set[str]) -> int:
    """Rounds of the gateways' own (first copies) that reached the topic after
    a higher round of their session, in the topic's order."""
    highest: dict[bytes, int] = {}
    seen: set[str] = set()
    late = 0
    for record in sorted(records, key=lambda record: (record.partition, record.offset)):
        try:
            event = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if event_id not in gateway_rounds or event_id in seen:
            continue
        seen.add(event_id)
        late += event["round"] < highest.get(record.key, 0)
        highest[record.key] = max(highest.get(record.key, 0), event["round"])
    return late


@pytest.mark.parametrize("via", ["kafka", "http"])
def test_a_gateway_reordering_rounds_is_billed_each_delivered_round_once(deployment: Deployment,
                                                                          via: Transport) -> None:
    worker = deployment.worker("worker", ACCOUNTANT_API_TOKEN=TOKEN).start().wait_ready()
    simulation = Simulation(SimulationConfig(sessions=120, rounds=6, duplicates=0.1, bad=0.05, idle=0.1,
                                             lost_rounds=0.1, late_rounds=0.3, seed=7, run_id=new_run_id(),
                                             via=via))
    expected = simulation.expected
    assert expected.late_rounds >= 20 and expected.missing_rounds >= 5, expected.to_json()

    refusals = None
    if via == "http":
        _, judged = asyncio.run(publish_http(simulation.events(), worker.url, token=TOKEN, batch=50,
                                             progress=None))
        refusals = check_refusals(expected, judged)
    else:
        asyncio.run(publish(simulation.events(), deployment.bootstrap, deployment.events_topic, progress=None))

    # The rounds reached the topic out of order, as planned.
    on_topic = expected.events_sent - expected.refused
    records = consume(deployment.bootstrap, deployment.events_topic, lambda records: len(records) >= on_topic)
    assert len(records) == on_topic
    gateway_rounds = {event.event_id for event in simulation.events()
                      if event.form is Form.EVENT and event.result is Result.APPLIED
                      and event.body is not None and event.body["type"] == "round.completed"}
    assert rounds_landing_late(records, gateway_rounds) == expected.late_rounds

    collected = asyncio.run(collect_outputs(deployment.bootstrap, expected, closures_topic=deployment.closures_topic,
                                            rejected_topic=deployment.rejected_topic, timeout=90, progress=None))
    report = verify_outputs(expected, collected, refusals)
    assert report.ok, format_report(report)
    assert (report.closures.received, report.closures.repeated) == (expected.sessions, 0)
    assert report.closures.received_tokens == expected.total_tokens
    if refusals is not None:
        assert refusals.received == expected.refused > 0

    wanted = {"applied": expected.applied, "duplicate": expected.duplicate, "rejected": dict(expected.rejected)}

    def counts() -> dict:
        stats = worker.stats(headers=BEARER)
        return {"applied": stats["applied"], "duplicate": stats["duplicate"],
                "rejected": {reason: count for reason, count in stats["rejected"].items() if count}}

    wait_for("the worker's counts to match the plan", lambda: counts() == wanted, timeout=60, interval=0.5,
             observed=lambda: f"{counts()} != {wanted}")
