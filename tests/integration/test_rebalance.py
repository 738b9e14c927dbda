"""A second worker joining: both keep accounting every partition they own."""

from __future__ import annotations

import pytest

from tests.integration.test_recovery import assert_closures_exact, make_sessions
from tests.support.deployment import Deployment
from tests.support.kafka import produce_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_events_after_a_second_worker_joins_are_all_accounted(deployment: Deployment) -> None:
    first = deployment.worker("first").start().wait_ready()
    second = deployment.worker("second").start().wait_ready()
    first.wait_ready()  # ready again once the rebalance settled
    events, expected = make_sessions("joined", 60, seed=3)
    produce_events(deployment.bootstrap, deployment.events_topic, events)

    figures = assert_closures_exact(deployment, expected, timeout=60)
    assert figures["sessions"] == 60
    # Each worker's own counters (the fan-out header asks for the local part only).
    # A batch's outcomes are counted once it is written, just after its closures.
    def applied() -> list[int] | None:
        counts = [worker.stats(local=True)["applied"] for worker in (first, second)]
        return counts if sum(counts) >= len(events) else None

    counts = wait_for(f"the workers to apply all {len(events)} events", applied, timeout=30,
                      observed=lambda: [worker.stats(local=True) for worker in (first, second)])
    assert all(count > 0 for count in counts), f"a worker accounted nothing: {counts}"


def test_events_produced_during_the_rebalance_are_all_accounted(deployment: Deployment) -> None:
    deployment.worker("first").start().wait_ready()
    second = deployment.worker("second").start()
    events, expected = make_sessions("during", 60, seed=4)
    produce_events(deployment.bootstrap, deployment.events_topic, events)
    second.wait_ready()
    assert_closures_exact(deployment, expected, timeout=60)
