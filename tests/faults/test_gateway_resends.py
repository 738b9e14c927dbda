"""Fault 5: gateways re-send every event, 2 or 3 deliveries in all.

Each copy carries the same bytes as its original (a gateway retry) and lands
at a random later point of its session's stream, so copies interleave with
the session's later events and, on the same partition, with other sessions'.
The closures must be exactly those of a single delivery: the same totals,
rounds and missing rounds as the simulator's oracle, and record timestamps
that are those of the first delivery of each event.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.dev.simulator import Simulation, SimulationConfig, new_run_id
from tests.faults.harness import Timeline, copies_interleaved, finish, publish_piece, with_copies
from tests.support.deployment import Deployment
from tests.support.ledger import simulated

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_every_event_delivered_two_or_three_times_bills_as_once(deployment: Deployment,
                                                               fault_figures: Callable[[dict], None],
                                                               guarantee: str) -> None:
    timeline = Timeline()
    simulation = Simulation(SimulationConfig(sessions=1200, rounds=6, seed=5005, run_id=new_run_id()))
    ledger, stamper = simulated(simulation)
    single = simulation.expected
    stream = with_copies(simulation, seed=5005)
    copies = len(stream) - single.events_sent
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()

    worker = deployment.worker("worker").start().wait_ready()
    timeline("ready")
    publish_piece(deployment, stream, stamper)
    timeline("published")
    # The single delivery's applications, and only those: every copy is a
    # duplicate, or rejected again for the same reason as its original.
    assert ledger.applied == single.applied
    assert ledger.rejected.keys() == single.rejected.keys()
    assert all(2 * single.rejected[r] <= ledger.rejected[r] <= 3 * single.rejected[r] for r in single.rejected)
    assert 2 * single.events_sent <= ledger.sent <= 3 * single.events_sent
    spread = copies_interleaved(stream)
    verdict = finish(deployment, ledger, simulation, faults=copies, report=fault_figures, stats_from=worker,
           exact_stats=True, timeline=timeline,
           extra={"copies": copies, "single_delivery_events": single.events_sent, **spread})
    assert verdict.figures["closures_repeated"] == 0, "no fault restarted the worker: no closure may repeat"
